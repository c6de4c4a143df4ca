//! star-collect: see `star::collect`.

use std::process::ExitCode;

use star::collect::{load_resources, Collect, CollectConfig, USAGE};
use star::flags::Parsed;
use star::{logln, server, Error};

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("star-collect: {e}");
            if matches!(e, Error::Flag(_)) {
                eprintln!("{USAGE}");
            }
            ExitCode::from(2)
        }
    }
}

fn run() -> Result<(), Error> {
    let config = match CollectConfig::from_args(std::env::args().skip(1))? {
        Parsed::Run(config) => config,
        Parsed::Help => {
            println!("{USAGE}");
            return Ok(());
        }
    };
    // First: an inherited socket (--http-listen-fd) is taken before this
    // process opens any descriptor of its own.
    let listener = config.listen.open()?;
    let resources = match &config.resources_file {
        Some(path) => load_resources(path)?,
        None => Vec::new(),
    };
    star::log::init(config.logfile.as_deref())?;
    server::announce("star-collect", listener.addr);
    logln!(
        "star-collect listening on {}, fetching {} resource(s) every {:?}",
        listener.addr,
        resources.len(),
        config.interval
    );
    let collect = Collect::new(resources, Some(config.interval));
    server::serve(listener, collect);
    Ok(())
}
