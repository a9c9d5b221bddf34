//! A private PostgreSQL cluster run from the binaries installed on the
//! machine: created on first use, started, and stopped again. The `tend`
//! server uses it when no database is configured, and the test harness uses
//! it for its throwaway cluster.
//!
//! It is not a PostgreSQL installer: it finds `initdb` and `pg_ctl` and says
//! what to install when they are missing. The cluster listens on a Unix
//! socket inside its data directory only, never on TCP.
//!
//! PostgreSQL refuses to run as root. When this process is root, the cluster
//! is created and run as the `postgres` system user instead.

use std::ffi::OsStr;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection};

/// The user the cluster's superuser role is named after.
const SUPERUSER: &str = "postgres";
/// Longest Unix socket path the kernel accepts, less `/.s.PGSQL.5432`.
const MAX_SOCKET_DIR: usize = 107 - 14;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "PostgreSQL server binaries (initdb, pg_ctl) were not found on PATH or under \
         /usr/lib/postgresql/*/bin. Install them (Debian or Ubuntu: `apt-get install postgresql`), \
         or point Tend at an existing server with TEND_DATABASE_URL"
    )]
    MissingBinaries,
    #[error(
        "running as root, and PostgreSQL refuses to: create a `postgres` system user \
         (Debian: installed with the postgresql package), or run as another user"
    )]
    NoUnprivilegedUser,
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "the data directory path {0} is too long for PostgreSQL's Unix socket; choose a shorter one"
    )]
    PathTooLong(PathBuf),
    #[error("{command} failed ({status}): {output}")]
    Command {
        command: String,
        status: String,
        output: String,
    },
    #[error("database name {0:?} must be 1 to 63 characters of a-z, 0-9 or '_'")]
    BadDatabaseName(String),
    #[error("cannot reach the local cluster: {0}")]
    Database(#[from] sqlx::Error),
}

/// How to run the cluster.
#[derive(Debug, Clone)]
pub struct Options {
    /// Holds the cluster's files and its socket. Created if missing.
    pub data_dir: PathBuf,
    /// The database to create (if missing) for the application.
    pub database: String,
    /// Durable commits. Turn off only for throwaway test clusters.
    pub durable: bool,
    /// Extra `-c name=value` server settings.
    pub settings: Vec<(String, String)>,
}

impl Options {
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            database: "tend".into(),
            durable: true,
            settings: Vec::new(),
        }
    }
}

/// A running cluster. [`Cluster::stop`] stops it if this process started it.
#[derive(Debug)]
pub struct Cluster {
    data_dir: PathBuf,
    database: String,
    bin_dir: PathBuf,
    run_as: Option<(u32, u32)>,
    started_here: bool,
}

impl Cluster {
    /// Creates the cluster on first use, starts it unless it already runs,
    /// and creates the application database.
    pub async fn start(options: Options) -> Result<Self, Error> {
        let database = options.database.clone();
        if database.is_empty()
            || database.len() > 63
            || !database
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        {
            return Err(Error::BadDatabaseName(database));
        }
        let bin_dir = find_binaries().ok_or(Error::MissingBinaries)?;
        let run_as = if running_as_root()? {
            Some(unprivileged_user()?)
        } else {
            None
        };
        let data_dir = prepare_data_dir(&options.data_dir, run_as)?;
        if data_dir.as_os_str().len() > MAX_SOCKET_DIR {
            return Err(Error::PathTooLong(data_dir));
        }
        let mut cluster = Self {
            data_dir,
            database,
            bin_dir,
            run_as,
            started_here: false,
        };
        if !cluster.data_dir.join("PG_VERSION").exists() {
            cluster.initdb(options.durable)?;
        }
        if !cluster.is_running() {
            cluster.pg_ctl_start(&options)?;
            cluster.started_here = true;
        } else {
            tracing::info!(data_dir = %cluster.data_dir.display(), "using the local PostgreSQL that already runs there");
        }
        cluster.create_database().await?;
        Ok(cluster)
    }

    /// Where the cluster's files and socket are.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Connection options for the application database.
    pub fn connect_options(&self) -> PgConnectOptions {
        self.connect_options_for(&self.database)
    }

    pub fn connect_options_for(&self, database: &str) -> PgConnectOptions {
        PgConnectOptions::new_without_pgpass()
            .socket(&self.data_dir)
            .username(SUPERUSER)
            .database(database)
    }

    /// A libpq-style URL for the application database, for psql and pgbench.
    pub fn url(&self) -> String {
        format!(
            "postgres://{SUPERUSER}@localhost/{}?host={}",
            self.database,
            self.data_dir.display()
        )
    }

    /// Stops the cluster, if this process started it.
    pub fn stop(self) -> Result<(), Error> {
        if self.started_here {
            stop_cluster(&self.data_dir)?;
        }
        Ok(())
    }

    fn initdb(&self, durable: bool) -> Result<(), Error> {
        let mut cmd = self.command("initdb");
        cmd.arg("--pgdata").arg(&self.data_dir).args([
            "--username",
            SUPERUSER,
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C",
        ]);
        if !durable {
            cmd.arg("--no-sync");
        }
        run(&mut cmd)?;
        Ok(())
    }

    fn is_running(&self) -> bool {
        let mut cmd = self.command("pg_ctl");
        cmd.arg("status").arg("--pgdata").arg(&self.data_dir);
        cmd.output().is_ok_and(|o| o.status.success())
    }

    fn pg_ctl_start(&self, options: &Options) -> Result<(), Error> {
        let socket_dir = self.data_dir.display().to_string();
        let mut settings = vec![
            // Socket only: nothing on the network can reach a trust-auth cluster.
            ("listen_addresses".to_string(), String::new()),
            ("unix_socket_directories".to_string(), socket_dir),
            ("unix_socket_permissions".to_string(), "0700".to_string()),
        ];
        if !options.durable {
            for name in ["fsync", "synchronous_commit", "full_page_writes"] {
                settings.push((name.to_string(), "off".to_string()));
            }
        }
        settings.extend(options.settings.iter().cloned());
        let server_options = settings
            .iter()
            .map(|(k, v)| format!("-c {k}='{}'", v.replace('\'', "")))
            .collect::<Vec<_>>()
            .join(" ");
        let mut cmd = self.command("pg_ctl");
        cmd.arg("start")
            .arg("--pgdata")
            .arg(&self.data_dir)
            .arg("--log")
            .arg(self.data_dir.join("server.log"))
            .args(["--wait", "--timeout=120", "--silent"])
            .arg("-o")
            .arg(server_options);
        run(&mut cmd).map(|_| ())
    }

    async fn create_database(&self) -> Result<(), Error> {
        let mut conn = self.connect_options_for("postgres").connect().await?;
        let exists: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
                .bind(&self.database)
                .fetch_one(&mut conn)
                .await?;
        if !exists {
            // The name was checked to be a plain identifier above.
            let sql = format!("CREATE DATABASE \"{}\"", self.database);
            sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                .execute(&mut conn)
                .await?;
        }
        conn.close().await?;
        Ok(())
    }

    fn command(&self, program: &str) -> Command {
        command(&self.bin_dir, program, self.run_as)
    }
}

/// Stops the cluster in `data_dir`, whoever started it.
pub fn stop_cluster(data_dir: &Path) -> Result<(), Error> {
    let bin_dir = find_binaries().ok_or(Error::MissingBinaries)?;
    let run_as = if running_as_root()? {
        Some(unprivileged_user()?)
    } else {
        None
    };
    let mut cmd = command(&bin_dir, "pg_ctl", run_as);
    cmd.arg("stop")
        .arg("--pgdata")
        .arg(data_dir)
        .args(["--mode=fast", "--wait", "--silent"]);
    run(&mut cmd).map(|_| ())
}

fn command(bin_dir: &Path, program: &str, run_as: Option<(u32, u32)>) -> Command {
    let mut cmd = Command::new(bin_dir.join(program));
    // The caller's working directory may be unreadable by the cluster's user.
    cmd.current_dir("/");
    cmd.env_remove("PGDATA").env("LC_ALL", "C");
    if let Some((uid, gid)) = run_as {
        cmd.uid(uid).gid(gid);
    }
    cmd
}

fn run(cmd: &mut Command) -> Result<Output, Error> {
    let describe = |cmd: &Command| {
        let program = Path::new(cmd.get_program())
            .file_name()
            .unwrap_or(OsStr::new("?"))
            .to_string_lossy()
            .into_owned();
        let args: Vec<_> = cmd
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        format!("{program} {}", args.join(" "))
    };
    let output = cmd.output().map_err(|source| Error::Io {
        action: "cannot run",
        path: PathBuf::from(cmd.get_program()),
        source,
    })?;
    if output.status.success() {
        Ok(output)
    } else {
        let mut text = String::from_utf8_lossy(&output.stderr).into_owned();
        text.push_str(&String::from_utf8_lossy(&output.stdout));
        Err(Error::Command {
            command: describe(cmd),
            status: output.status.to_string(),
            output: text.trim().to_string(),
        })
    }
}

/// The folder of the PostgreSQL server binaries this crate uses: `initdb`
/// and `pg_ctl` on PATH, else the newest Debian-style install.
pub fn binaries_dir() -> Option<PathBuf> {
    find_binaries()
}

fn find_binaries() -> Option<PathBuf> {
    let has_both = |dir: &Path| dir.join("initdb").is_file() && dir.join("pg_ctl").is_file();
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            if has_both(&dir) {
                return Some(dir);
            }
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            has_both(&bin).then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

/// Whether this process runs as root, when the cluster runs as `postgres`.
pub fn running_as_root() -> Result<bool, Error> {
    // /proc/self belongs to the effective user.
    let meta = std::fs::metadata("/proc/self").map_err(|source| Error::Io {
        action: "cannot read",
        path: "/proc/self".into(),
        source,
    })?;
    Ok(meta.uid() == 0)
}

fn unprivileged_user() -> Result<(u32, u32), Error> {
    let id = |flag: &str| -> Option<u32> {
        let out = Command::new("id").args([flag, "postgres"]).output().ok()?;
        if !out.status.success() {
            return None;
        }
        String::from_utf8(out.stdout).ok()?.trim().parse().ok()
    };
    match (id("-u"), id("-g")) {
        (Some(uid), Some(gid)) if uid != 0 => Ok((uid, gid)),
        _ => Err(Error::NoUnprivilegedUser),
    }
}

/// Creates the data directory (mode 0700) owned by the cluster's user, and
/// returns its absolute path.
fn prepare_data_dir(dir: &Path, run_as: Option<(u32, u32)>) -> Result<PathBuf, Error> {
    let io = |action, source| Error::Io {
        action,
        path: dir.to_path_buf(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(|e| io("cannot create", e))?;
    let dir = dir.canonicalize().map_err(|e| io("cannot resolve", e))?;
    let meta = std::fs::metadata(&dir).map_err(|e| io("cannot read", e))?;
    if let Some((uid, gid)) = run_as
        && meta.uid() != uid
    {
        std::os::unix::fs::chown(&dir, Some(uid), Some(gid))
            .map_err(|e| io("cannot hand over", e))?;
        // The cluster's user must be able to reach the directory.
        for ancestor in dir.ancestors().skip(1) {
            let Ok(m) = std::fs::metadata(ancestor) else {
                break;
            };
            if m.permissions().mode() & 0o001 == 0 {
                return Err(Error::Io {
                    action: "the postgres user cannot reach the data directory through",
                    path: ancestor.to_path_buf(),
                    source: std::io::Error::from(std::io::ErrorKind::PermissionDenied),
                });
            }
        }
    }
    if meta.permissions().mode() & 0o077 != 0 {
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| io("cannot restrict", e))?;
    }
    Ok(dir)
}
