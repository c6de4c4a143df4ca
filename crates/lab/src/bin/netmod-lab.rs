//! `netmod-lab`: the lab and the demo as their own binary, so the product
//! binary `netmod` does not carry the lab. `netmod lab ...` and
//! `netmod demo ...` exec this; any other first word is netmod's own
//! command and is handed to the `netmod` binary beside this one.

use std::os::unix::process::CommandExt;

fn main() {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let first = args.first().cloned().unwrap_or_default();
    let code = match first.as_str() {
        "lab" => netmod_lab::main(args.split_off(1)),
        "demo" => netmod_lab::demo(args.split_off(1)),
        _ => {
            let me = std::env::current_exe().expect("own path");
            let netmod = me.with_file_name("netmod");
            let err = std::process::Command::new(&netmod).args(&args).exec();
            eprintln!("netmod-lab: cannot run {}: {err}", netmod.display());
            127
        }
    };
    std::process::exit(code);
}
