//! The lab: a local stand-in for Mesos master + agents + Marathon + Mesos-DNS,
//! built from network namespaces on one machine.

/// `netmod lab ARGS...`; returns the exit status.
pub fn main(args: Vec<String>) -> i32 {
    eprintln!("netmod lab: not built yet ({args:?})");
    2
}

/// `netmod demo ARGS...`; returns the exit status.
pub fn demo(args: Vec<String>) -> i32 {
    eprintln!("netmod demo: not built yet ({args:?})");
    2
}
