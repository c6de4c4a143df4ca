//! star-probe: see `star::probe`.

use std::process::ExitCode;

use star::flags::Parsed;
use star::probe::{Probe, ProbeConfig, USAGE};
use star::{logln, server, Error};

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("star-probe: {e}");
            if matches!(e, Error::Flag(_)) {
                eprintln!("{USAGE}");
            }
            ExitCode::from(2)
        }
    }
}

fn run() -> Result<(), Error> {
    let config = match ProbeConfig::from_args(std::env::args().skip(1))? {
        Parsed::Run(config) => config,
        Parsed::Help => {
            println!("{USAGE}");
            return Ok(());
        }
    };
    // First: an inherited socket (--http-listen-fd) is taken before this
    // process opens any descriptor of its own.
    let listener = config.listen.open()?;
    star::log::init(config.logfile.as_deref())?;
    server::announce("star-probe", listener.addr);
    logln!(
        "star-probe listening on {}, probing {} target(s) every {:?}",
        listener.addr,
        config.urls.len(),
        config.interval
    );
    let probe = Probe::new(config.urls);
    probe.start(config.interval);
    server::serve(listener, probe);
    Ok(())
}
