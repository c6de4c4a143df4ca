//! Calico GlobalNetworkPolicy resources in the datastore, one key each:
//! `policies/<name>` → the policy in Calico's JSON form. Every node follows
//! them through the change feed like any other record.

use crate::CoreError;
use netmod_calico::GlobalNetworkPolicy;
use netmod_store::{Compare, KeyValue, Op, Store};

pub const POLICIES: &str = "policies/";
/// Every policy's selectors, kept beside the policies by `apply` and
/// `delete` (outside `policies/`): what a plugin reads on each isolate.
pub const SELECTOR_INDEX: &str = "policy-selectors";

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
        let mut after: std::collections::BTreeMap<String, GlobalNetworkPolicy> = list(store)?
            .into_iter()
            .map(|p| (p.name.clone(), p))
            .collect();
        for p in policies {
            after.insert(p.name.clone(), p.clone());
        }
        index_ops(
            store,
            after.values().cloned().collect(),
            &mut compares,
            &mut ops,
        )?;
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
        // Another writer of policies came first (the index serialises us).
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
    for _attempt in 0..5 {
        let Some(kv) = store.get(&key)? else {
            return Ok(false);
        };
        let rest: Vec<GlobalNetworkPolicy> = list(store)?
            .into_iter()
            .filter(|p| p.name != name)
            .collect();
        let (mut compares, mut ops) = (vec![Compare::unchanged(&kv)], vec![Op::delete(&key)]);
        index_ops(store, rest, &mut compares, &mut ops)?;
        if store.txn(&compares, &ops)?.succeeded {
            return Ok(true);
        }
    }
    Err(CoreError::Other(
        "policies kept changing under us; try again".into(),
    ))
}

/// The index's write (when it changes) and the compare that makes a
/// concurrent policy write retry.
fn index_ops(
    store: &dyn Store,
    policies: Vec<GlobalNetworkPolicy>,
    compares: &mut Vec<Compare>,
    ops: &mut Vec<Op>,
) -> Result<(), CoreError> {
    let index = serde_json::to_vec(&netmod_policy::SelectorIndex::of(&policies))
        .expect("plain data serialises");
    match store.get(SELECTOR_INDEX)? {
        Some(kv) => {
            compares.push(Compare::unchanged(&kv));
            if kv.value != index {
                ops.push(Op::put(SELECTOR_INDEX, index));
            }
        }
        None => {
            compares.push(Compare::absent(SELECTOR_INDEX));
            ops.push(Op::put(SELECTOR_INDEX, index));
        }
    }
    Ok(())
}

/// The selector index (what a new endpoint needs of the policies); built
/// from the policies themselves when a store has none yet (written before
/// the index existed).
pub fn selector_index(store: &dyn Store) -> Result<netmod_policy::SelectorIndex, CoreError> {
    match store.get(SELECTOR_INDEX)? {
        Some(kv) => serde_json::from_slice(&kv.value)
            .map_err(|e| CoreError::Other(format!("record {SELECTOR_INDEX}: {e}"))),
        None => Ok(netmod_policy::SelectorIndex::of(&list(store)?)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(name: &str, selector: &str, types: &str) -> GlobalNetworkPolicy {
        netmod_calico::parse_policies(&format!(
            "apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata:
  name: {name}
spec:
  selector: {selector}
  types: [{types}]
  egress:
    - action: Allow
      destination:
        selector: role == 'client'
"
        ))
        .unwrap()
        .remove(0)
    }

    /// The index always says what the stored policies say, through
    /// creates, updates and deletes; a store without one (written before
    /// it existed) is answered from the policies.
    #[test]
    fn apply_and_delete_keep_the_selector_index_with_the_policies() {
        let dir = tempfile::tempdir().unwrap();
        let store = netmod_store::SqliteStore::open(&dir.path().join("s.db")).unwrap();
        let agrees = |store: &dyn Store| {
            let want = netmod_policy::SelectorIndex::of(&list(store).unwrap());
            let kv = store.get(SELECTOR_INDEX).unwrap().expect("an index");
            let got: netmod_policy::SelectorIndex = serde_json::from_slice(&kv.value).unwrap();
            assert_eq!(got, want);
        };
        apply(&store, &[policy("a", "role == 'db'", "Egress")]).unwrap();
        agrees(&store);
        apply(
            &store,
            &[
                policy("a", "role == 'web'", "Ingress, Egress"),
                policy("b", "has(tier)", "Egress"),
            ],
        )
        .unwrap();
        agrees(&store);
        let index = selector_index(&store).unwrap();
        let web = index
            .selectors
            .iter()
            .find(|s| s.selector.canonical() == "role == \"web\"")
            .expect("a's selector");
        assert!(web.ingress && web.egress, "{index:?}");
        assert!(delete(&store, "a").unwrap());
        agrees(&store);
        assert!(!delete(&store, "a").unwrap());
        assert!(delete(&store, "b").unwrap());
        agrees(&store);
        assert!(selector_index(&store).unwrap().selectors.is_empty());
        // An older store: policies, no index.
        store
            .txn(
                &[],
                &[
                    Op::put(policy_key("c"), policy("c", "all()", "Egress").to_json()),
                    Op::delete(SELECTOR_INDEX),
                ],
            )
            .unwrap();
        assert_eq!(selector_index(&store).unwrap().selectors.len(), 2);
    }
}
