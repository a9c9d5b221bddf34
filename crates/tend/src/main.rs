//! `tend`: the Tend server. It composes the gRPC services over the event
//! store and owns everything that touches the outside world at start-up:
//! configuration, logging, the database (or an embedded one), signals.

mod background;
mod commands;
mod config;
mod database;
mod gauges;
mod keys;
mod logging;
mod options;
mod readiness;
mod serve;
mod telemetry;
mod tls;
mod web;

use std::process::ExitCode;

use clap::Parser;

use config::{Cli, Command, KeysCommand, ProjectionsCommand, TokenCommand};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

// Many small, short-lived allocations per call (HTTP/2 frames, protobuf,
// JSON): glibc's malloc showed as ~8% of the server's CPU in a profile of
// the practice-log benchmark, and mimalloc gave more calls per second there.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // A rebuild runs on one thread: on a machine shared with servers it
    // takes one core and leaves the rest to serving.
    let one_thread = matches!(
        cli.command,
        Command::Projections {
            command: ProjectionsCommand::Rebuild { .. }
        }
    );
    let runtime = if one_thread {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            // Named apart from the background runtime's thread (`background`).
            .thread_name("tend-serve")
            .enable_all()
            .build()
    };
    let runtime = match runtime {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tend: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve(options) => {
                let options = options.validate()?;
                let settings = telemetry::Settings::from(|k| std::env::var(k).ok())?;
                let (telemetry, tracer) = telemetry::Telemetry::install(&settings)?;
                logging::init(&options.database.log, tracer)?;
                let served = serve::serve(options, &telemetry).await;
                telemetry.shutdown();
                served
            }
            Command::Migrate(options) => {
                logging::init(&options.log, None)?;
                commands::migrate_only(options).await
            }
            Command::Token {
                command: TokenCommand::New { tenant },
            } => commands::new_token(&tenant),
            Command::Keys {
                command: KeysCommand::New { id },
            } => commands::new_master_key(&id),
            Command::Keys {
                command:
                    KeysCommand::NewRecipient {
                        tenant,
                        recipient,
                        id,
                    },
            } => commands::new_recipient_key(&tenant, &recipient, &id),
            Command::Keys {
                command: KeysCommand::Rotate { keys, database },
            } => {
                logging::init(&database.log, None)?;
                commands::rotate_keys(keys, database).await
            }
            Command::Projections {
                command:
                    ProjectionsCommand::Rebuild {
                        name,
                        flush_every,
                        duty,
                        database,
                    },
            } => {
                logging::init(&database.log, None)?;
                commands::rebuild_projection(&name, flush_every, duty, database).await
            }
            Command::Projections {
                command: ProjectionsCommand::Status { database },
            } => {
                logging::init(&database.log, None)?;
                commands::projection_status(database).await
            }
            Command::Demo(options) => {
                logging::init(&options.database.log, None)?;
                commands::demo(options).await
            }
            Command::Export(options) => {
                logging::init(&options.database.log, None)?;
                commands::export(options).await
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tend: {e}");
            ExitCode::FAILURE
        }
    }
}
