//! Calico GlobalNetworkPolicy resources in the datastore, one key each:
//! `policies/<name>` → the policy in Calico's JSON form. Every node follows
//! them through the change feed like any other record.

use crate::CoreError;
use netmod_calico::GlobalNetworkPolicy;
use netmod_store::{Compare, KeyValue, Op, Store};

pub const POLICIES: &str = "policies/";

pub fn policy_key(name: &str) -> String {
    format!("{POLICIES}{name}")
}

/// What `apply` did with one policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Applied {
    Created,
    Updated,
    Unchanged,
}

/// Decode one stored policy.
pub fn decode(kv: &KeyValue) -> Result<GlobalNetworkPolicy, CoreError> {
    let value: serde_json::Value = serde_json::from_slice(&kv.value)
        .map_err(|e| CoreError::Other(format!("policy record {}: {e}", kv.key)))?;
    GlobalNetworkPolicy::from_json_value(&value)
        .map_err(|e| CoreError::Other(format!("policy record {}: {e}", kv.key)))
}

/// Store every policy of one file in one transaction: all or nothing.
/// Policies are validated by the parser before they get here.
pub fn apply(
    store: &dyn Store,
    policies: &[GlobalNetworkPolicy],
) -> Result<Vec<(String, Applied)>, CoreError> {
    for _attempt in 0..5 {
        let mut compares = Vec::new();
        let mut ops = Vec::new();
        let mut outcome = Vec::new();
        for p in policies {
            let key = policy_key(&p.name);
            let value = p.to_json().into_bytes();
            match store.get(&key)? {
                None => {
                    compares.push(Compare::absent(&key));
                    ops.push(Op::put(&key, value));
                    outcome.push((p.name.clone(), Applied::Created));
                }
                Some(kv) if decode(&kv).ok().as_ref() == Some(p) => {
                    compares.push(Compare::unchanged(&kv));
                    outcome.push((p.name.clone(), Applied::Unchanged));
                }
                Some(kv) => {
                    compares.push(Compare::unchanged(&kv));
                    ops.push(Op::put(&key, value));
                    outcome.push((p.name.clone(), Applied::Updated));
                }
            }
        }
        if ops.is_empty() || store.txn(&compares, &ops)?.succeeded {
            return Ok(outcome);
        }
    }
    Err(CoreError::Other(
        "policies kept changing under us; try again".into(),
    ))
}

/// Every stored policy, in evaluation order (order, then name). Records that
/// cannot be read are reported on stderr and skipped.
pub fn list(store: &dyn Store) -> Result<Vec<GlobalNetworkPolicy>, CoreError> {
    let (kvs, _) = store.range(POLICIES)?;
    let mut out = Vec::new();
    for kv in &kvs {
        match decode(kv) {
            Ok(p) => out.push(p),
            Err(e) => eprintln!("netmod: skipping an unreadable policy: {e}"),
        }
    }
    netmod_calico::sort_policies(&mut out);
    Ok(out)
}

pub fn get(store: &dyn Store, name: &str) -> Result<Option<GlobalNetworkPolicy>, CoreError> {
    store
        .get(&policy_key(name))?
        .map(|kv| decode(&kv))
        .transpose()
}

/// Ok(false) when there was no such policy.
pub fn delete(store: &dyn Store, name: &str) -> Result<bool, CoreError> {
    let key = policy_key(name);
    if store.get(&key)?.is_none() {
        return Ok(false);
    }
    store.txn(&[], &[Op::delete(&key)])?;
    Ok(true)
}
