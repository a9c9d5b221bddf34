//! `tend-local-postgres start DIR [--throwaway]` starts (creating on first
//! use) a private cluster in DIR and prints its URL; `tend-local-postgres
//! stop DIR` stops it. The test harness uses it for its throwaway cluster.

use std::process::ExitCode;

use tend_local_postgres::{Cluster, Options, stop_cluster};

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["start", dir, ref flags @ ..] if flags.iter().all(|f| *f == "--throwaway") => {
            let mut options = Options::new(dir);
            if flags.contains(&"--throwaway") {
                options.durable = false;
                options
                    .settings
                    .push(("max_connections".into(), "500".into()));
            }
            match Cluster::start(options).await {
                Ok(cluster) => {
                    println!("{}", cluster.url());
                    Ok(())
                }
                Err(e) => Err(e),
            }
        }
        ["stop", dir] => stop_cluster(dir.as_ref()),
        _ => {
            eprintln!("usage: tend-local-postgres start DIR [--throwaway] | stop DIR");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tend-local-postgres: {e}");
            ExitCode::FAILURE
        }
    }
}
