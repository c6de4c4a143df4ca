//! `netmod bench dataplane`: isolate latency against the CNI reference
//! plugins, policy cost at scale, throughput, node memory.

use super::BenchArgs;
use crate::CliError;

pub fn run(_args: &BenchArgs) -> Result<String, CliError> {
    Err(CliError::Other("the dataplane benchmark is not written yet".into()))
}
