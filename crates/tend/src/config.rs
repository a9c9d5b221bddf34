//! Every setting, as a flag and as a `TEND_*` environment variable (flags
//! win). The README's configuration table lists these.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "tend",
    version,
    about = "Tend: event-sourced gRPC backend for integration programs"
)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
// Parsed once at start-up: a big variant costs nothing worth a box.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Command {
    /// Serve the gRPC API.
    Serve(ServeOptions),
    /// Apply database migrations and exit.
    Migrate(DatabaseOptions),
    /// Partner tokens.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Master keys for practice notes.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Read models built from the event log.
    Projections {
        #[command(subcommand)]
        command: ProjectionsCommand,
    },
    /// Fill a tenant with a realistic synthetic cohort (the built-in
    /// protocols, every phase, practice, assessments, warnings), so that
    /// `tend serve` shows populated arcs and cohorts.
    Demo(DemoOptions),
    /// Write an analysis-ready export of a tenant's data for one of its
    /// recipients: CSV with a codebook, or Parquet; pseudonymous; only
    /// participants who share for research; as the log stood at one
    /// position (the same position and options give the same bytes).
    Export(ExportOptions),
}

#[derive(Debug, Args)]
pub(crate) struct ExportOptions {
    /// The tenant whose data is exported (`dev`: the embedded database's
    /// development tenant).
    #[arg(long, default_value = "dev")]
    pub tenant: String,

    /// The recipient, one of the tenant's in TEND_RECIPIENT_KEYS: the
    /// pseudonyms are theirs.
    #[arg(long)]
    pub recipient: String,

    /// The recipient key to make pseudonyms with (default: the current
    /// one): an earlier export's, to keep joining it after a rotation.
    #[arg(long)]
    pub key_id: Option<String>,

    /// `csv` (RFC 4180, with codebook.json and codebook.csv) or `parquet`
    /// (typed columns, with the same codebook).
    #[arg(long, default_value = "csv", value_parser = ["csv", "parquet"])]
    pub format: String,

    /// A directory that does not exist yet, or is empty. The files are
    /// written beside it under a temporary name and moved in when whole.
    #[arg(long)]
    pub out: PathBuf,

    /// The log position the export reflects; 0: the head when it starts.
    /// The codebook names the position used.
    #[arg(long, default_value_t = 0)]
    pub at_position: u64,

    /// Incremental: only rows changed after this position (participants
    /// are always all there).
    #[arg(long, default_value_t = 0)]
    pub since_position: u64,

    /// Leave dates and instants out; days from the session's date stay.
    #[arg(long)]
    pub shift_dates: bool,

    /// Retracted practice entries too, marked `retracted`.
    #[arg(long)]
    pub include_retracted: bool,

    /// A reference SD of an instrument's total for the reliable change
    /// index, `INSTRUMENT=SD` (e.g. `scs-sf=0.6`), over the instrument's
    /// own; repeatable. The built-in instruments have none.
    #[arg(long = "sd", value_name = "INSTRUMENT=SD")]
    pub sd: Vec<String>,

    #[command(flatten)]
    pub keys: KeyOptions,

    #[command(flatten)]
    pub database: DatabaseOptions,
}

#[derive(Debug, Subcommand)]
pub(crate) enum ProjectionsCommand {
    /// Build a projection again from the whole log, beside the one queries
    /// read, and switch to it once it has caught up. Safe while servers
    /// run; a rebuild that stops is resumed by running it again.
    Rebuild {
        /// The projection: `arc`.
        name: String,
        /// Events folded in memory between writes.
        #[arg(long, default_value_t = 500_000)]
        flush_every: usize,
        /// The share of the time the rebuild works, 0.05 to 1: below 1 it
        /// rests between pages, leaving the CPU to servers on the same
        /// machine.
        #[arg(long, default_value_t = 1.0)]
        duty: f64,
        #[command(flatten)]
        database: DatabaseOptions,
    },
    /// How far each projection is behind the log.
    Status {
        #[command(flatten)]
        database: DatabaseOptions,
    },
}

#[derive(Debug, Args)]
pub(crate) struct DemoOptions {
    /// The tenant to fill; it must hold no participants yet. `dev` is the
    /// tenant of the embedded database's development token.
    #[arg(long, default_value = "dev")]
    pub tenant: String,

    /// How many participants.
    #[arg(long, default_value_t = 300)]
    pub participants: usize,

    /// The same seed gives the same cohort.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,

    #[command(flatten)]
    pub clock: ClockOptions,

    #[command(flatten)]
    pub keys: KeyOptions,

    #[command(flatten)]
    pub database: DatabaseOptions,
}

/// Where "now" comes from: the system clock, unless a test says otherwise.
#[derive(Debug, Args)]
pub(crate) struct ClockOptions {
    /// Test only: start the clock at this RFC 3339 instant (it then runs at
    /// real pace), so that end-to-end tests place "now" where they need it
    /// instead of waiting for the wall clock. Release builds refuse it;
    /// empty is unset.
    #[arg(long, env = "TEND_TEST_CLOCK", hide = true)]
    pub test_clock: Option<String>,

    /// Test only: with `--test-clock`, how many times faster than the
    /// system clock it runs (1..=3600).
    #[arg(long, env = "TEND_TEST_CLOCK_RATE", hide = true, default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..=3600))]
    pub test_clock_rate: u32,

    /// Test only: with `--test-clock`, the moment (RFC 3339, by the system
    /// clock) at which the test clock reads its start, so that several
    /// servers agree; default: when the server starts.
    #[arg(long, env = "TEND_TEST_CLOCK_SINCE", hide = true)]
    pub test_clock_since: Option<String>,
}

/// The early-warning rules (docs/arc.md gives the reasoning).
#[derive(Debug, Args)]
pub(crate) struct ArcOptions {
    /// Critic returns: raised when practice minutes per day in weeks +2
    /// and +3 fall below this share of the participant's pre-session rate.
    #[arg(long, env = "TEND_ARC_CRITIC_RATIO", default_value_t = 0.5)]
    pub arc_critic_ratio: f64,

    /// ... and cleared when they recover to this share.
    #[arg(long, env = "TEND_ARC_CRITIC_CLEAR_RATIO", default_value_t = 0.75)]
    pub arc_critic_clear_ratio: f64,

    /// Missed in a row: raised at this many consecutive missed occurrences.
    #[arg(long, env = "TEND_ARC_MISSED_IN_A_ROW", default_value_t = 3,
          value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub arc_missed_in_a_row: u32,

    /// Subscale rise: the reference SD of a subscale mean for the
    /// reliable-change threshold (an assumption; no SD is published).
    #[arg(long, env = "TEND_ARC_RISE_SD", default_value_t = 0.8)]
    pub arc_rise_sd: f64,

    /// Whether this server may run the arc projection (one server at a
    /// time does, by lease).
    #[arg(long, env = "TEND_ARC_PROJECTION", default_value_t = true, action = clap::ArgAction::Set)]
    pub arc_projection: bool,
}

#[derive(Debug, Subcommand)]
pub(crate) enum KeysCommand {
    /// Print a new random master key entry for TEND_MASTER_KEYS.
    New {
        /// The key's id, stored beside every data key it wraps.
        #[arg(long)]
        id: String,
    },
    /// Print a new random key entry for TEND_RECIPIENT_KEYS: one recipient
    /// of pseudonymous data of one tenant.
    NewRecipient {
        #[arg(long)]
        tenant: String,
        /// The recipient's id, as partners name it (e.g. `analysis-team`).
        #[arg(long)]
        recipient: String,
        /// The key's id (a new id per rotation).
        #[arg(long)]
        id: String,
    },
    /// Re-wrap every participant's data key with the first master key, and
    /// re-hash every reference lookup with it, so that older ones can be
    /// retired. Safe while servers run; repeatable.
    Rotate {
        #[command(flatten)]
        keys: KeyOptions,
        #[command(flatten)]
        database: DatabaseOptions,
    },
}

#[derive(Args)]
pub(crate) struct KeyOptions {
    /// Master keys that wrap each participant's note key: `<id>:<base64 of
    /// 32 bytes>`, comma separated, the current one first (`tend keys new`).
    /// Unset with the embedded database: one is made and kept in the data
    /// directory (development only).
    #[arg(long, env = "TEND_MASTER_KEYS", hide_env_values = true)]
    pub master_keys: Option<String>,

    /// A file holding TEND_MASTER_KEYS (a mounted secret), instead.
    #[arg(long, env = "TEND_MASTER_KEYS_FILE", conflicts_with = "master_keys")]
    pub master_keys_file: Option<PathBuf>,

    /// The tenants' recipients of pseudonymous data, each with its own key:
    /// `<tenant>/<recipient>/<key id>:<base64 of 32 bytes>`, comma
    /// separated; of one recipient's keys the first is current (`tend keys
    /// new-recipient`).
    #[arg(long, env = "TEND_RECIPIENT_KEYS", hide_env_values = true)]
    pub recipient_keys: Option<String>,

    /// A file holding TEND_RECIPIENT_KEYS (a mounted secret), instead.
    #[arg(
        long,
        env = "TEND_RECIPIENT_KEYS_FILE",
        conflicts_with = "recipient_keys"
    )]
    pub recipient_keys_file: Option<PathBuf>,
}

// By hand: the keys themselves never reach a debug print.
impl std::fmt::Debug for KeyOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyOptions")
            .field(
                "master_keys",
                &self.master_keys.as_ref().map(|_| "<redacted>"),
            )
            .field("master_keys_file", &self.master_keys_file)
            .field(
                "recipient_keys",
                &self.recipient_keys.as_ref().map(|_| "<redacted>"),
            )
            .field("recipient_keys_file", &self.recipient_keys_file)
            .finish()
    }
}

#[derive(Debug, Subcommand)]
pub(crate) enum TokenCommand {
    /// Issue a new token: prints the token (give it to the partner) and the
    /// hash entry for TEND_AUTH_TOKENS (keep it in the configuration).
    New {
        #[arg(long)]
        tenant: String,
    },
}

#[derive(Args)]
pub(crate) struct DatabaseOptions {
    /// PostgreSQL URL. Unset: an embedded cluster under --data-dir.
    #[arg(long, env = "TEND_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,

    /// Where the embedded PostgreSQL keeps its files when no URL is set.
    /// Default: $XDG_DATA_HOME/tend or ~/.local/share/tend; /var/lib/tend as root.
    #[arg(long, env = "TEND_DATA_DIR")]
    pub data_dir: Option<PathBuf>,

    /// Most connections to PostgreSQL.
    #[arg(long, env = "TEND_DB_MAX_CONNECTIONS", default_value_t = 16)]
    pub db_max_connections: u32,

    #[command(flatten)]
    pub log: LogOptions,
}

// By hand: the URL may hold a password.
impl std::fmt::Debug for DatabaseOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DatabaseOptions")
            .field(
                "database_url",
                &self.database_url.as_ref().map(|_| "<redacted>"),
            )
            .field("data_dir", &self.data_dir)
            .field("db_max_connections", &self.db_max_connections)
            .field("log", &self.log)
            .finish()
    }
}

#[derive(Debug, Args)]
pub(crate) struct ServeOptions {
    /// Address for gRPC.
    #[arg(long, env = "TEND_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,

    /// A second address serving only gRPC health, in plain text, for
    /// probes that cannot speak TLS (Kubernetes' native gRPC probes).
    /// Unset: health is on the gRPC port only.
    #[arg(long, env = "TEND_HEALTH_LISTEN")]
    pub health_listen: Option<SocketAddr>,

    /// Address for FHIR R4 over HTTP (Bulk Data $export and reads), under
    /// `/fhir`; TLS like the gRPC port when TEND_TLS_CERT is set. Unset: no
    /// FHIR endpoint.
    #[arg(long, env = "TEND_FHIR_LISTEN")]
    pub fhir_listen: Option<SocketAddr>,

    /// The FHIR base URL links in answers use (behind a proxy). Unset: the
    /// request's own host, under `/fhir`.
    #[arg(long, env = "TEND_FHIR_BASE_URL")]
    pub fhir_base_url: Option<String>,

    /// FHIR exports this server builds at once.
    #[arg(long, env = "TEND_FHIR_EXPORT_WORKERS", default_value_t = 1,
          value_parser = clap::value_parser!(u16).range(1..=16))]
    pub fhir_export_workers: u16,

    /// FHIR exports a tenant may have under way at once.
    #[arg(long, env = "TEND_FHIR_EXPORTS_PER_TENANT", default_value_t = 4,
          value_parser = clap::value_parser!(u16).range(1..=100))]
    pub fhir_exports_per_tenant: u16,

    /// Hours a finished FHIR export's files are kept.
    #[arg(long, env = "TEND_FHIR_EXPORT_RETENTION_HOURS", default_value_t = 24,
          value_parser = clap::value_parser!(u32).range(1..=720))]
    pub fhir_export_retention_hours: u32,

    /// Partner tokens: `<tenant>=sha256:<hex>` entries, comma separated.
    /// Unset with the embedded database: a development token is issued.
    #[arg(long, env = "TEND_AUTH_TOKENS", hide_env_values = true)]
    pub auth_tokens: Option<String>,

    /// Apply pending migrations at start-up.
    #[arg(long, env = "TEND_MIGRATE", default_value_t = true, action = clap::ArgAction::Set)]
    pub migrate: bool,

    /// Seconds to let calls in flight finish after SIGTERM or SIGINT.
    #[arg(long, env = "TEND_SHUTDOWN_GRACE_SECONDS", default_value_t = 20)]
    pub shutdown_grace_seconds: u64,

    /// Seconds to keep serving after SIGTERM while health reports
    /// NOT_SERVING, so that load balancers stop sending calls first.
    #[arg(long, env = "TEND_SHUTDOWN_DRAIN_SECONDS", default_value_t = 0,
          value_parser = clap::value_parser!(u64).range(0..=300))]
    pub shutdown_drain_seconds: u64,

    /// Events folded into the participants' states this server keeps in
    /// memory, so that their next command or scheduler round reads only
    /// what is new (least recently used dropped first; 0 keeps none).
    #[arg(long, env = "TEND_FOLD_CACHE_EVENTS",
          default_value_t = tend_event_store::DEFAULT_FOLD_CACHE_EVENTS,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(0..=100_000_000))]
    pub fold_cache_events: usize,

    /// Nice value of the thread that runs background work (the scheduler
    /// and the arc projection): 0 to 19. Above 0 the kernel
    /// gives the calls' threads the CPU first when both want it, and on a
    /// saturated machine background work (due and missed events, the arc
    /// projection) then falls behind until the load eases.
    #[arg(long, env = "TEND_BACKGROUND_NICE", default_value_t = 0,
          value_parser = clap::value_parser!(i32).range(0..=19))]
    pub background_nice: i32,

    /// Milliseconds between scheduler rounds: how promptly due and missed
    /// events follow the clock.
    #[arg(long, env = "TEND_SCHEDULER_TICK_MS", default_value_t = 1000,
          value_parser = clap::value_parser!(u64).range(10..=60_000))]
    pub scheduler_tick_ms: u64,

    /// Seconds a scheduler lease lasts unrenewed: how soon another server
    /// takes over from one that died.
    #[arg(long, env = "TEND_SCHEDULER_LEASE_SECONDS", default_value_t = 10,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub scheduler_lease_seconds: u64,

    /// Minutes a missed event waits after a window closes, so that practice
    /// synced late from an offline app still completes the occurrence.
    #[arg(long, env = "TEND_SCHEDULER_MISS_GRACE_MINUTES", default_value_t = 360,
          value_parser = clap::value_parser!(u32).range(0..=10_080))]
    pub scheduler_miss_grace_minutes: u32,

    /// Days back a practice entry may start (an app syncing after a long
    /// time offline).
    #[arg(long, env = "TEND_PRACTICE_BACKDATE_DAYS", default_value_t = 30,
          value_parser = clap::value_parser!(u32).range(1..=366))]
    pub practice_backdate_days: u32,

    #[command(flatten)]
    pub tls: TlsOptions,

    #[command(flatten)]
    pub webhooks: WebhookOptions,

    /// Origins whose browser pages may call the API over gRPC-Web (CORS),
    /// comma separated, like `https://portal.clinic.example`. gRPC-Web is
    /// served on the gRPC port either way; unset, no browser origin is
    /// allowed.
    #[arg(long, env = "TEND_GRPC_WEB_ORIGINS")]
    pub grpc_web_origins: Option<String>,

    #[command(flatten)]
    pub keys: KeyOptions,

    #[command(flatten)]
    pub arc: ArcOptions,

    #[command(flatten)]
    pub clock: ClockOptions,

    #[command(flatten)]
    pub database: DatabaseOptions,
}

/// Webhook deliveries.
#[derive(Debug, Args)]
pub(crate) struct WebhookOptions {
    /// Whether this server may deliver webhooks (one server at a time
    /// does, by lease).
    #[arg(long, env = "TEND_WEBHOOKS", default_value_t = true, action = clap::ArgAction::Set)]
    pub webhooks: bool,

    /// Hosts (names or addresses) endpoints may reach over plain http://,
    /// comma separated. Unset: https:// only.
    #[arg(long, env = "TEND_WEBHOOK_ALLOW_HTTP_HOSTS", default_value = "")]
    pub webhook_allow_http_hosts: String,

    /// Internal networks endpoints may reach (CIDR, comma separated), such
    /// as a receiver in the same cluster. Unset: loopback, private,
    /// link-local and other internal addresses are refused.
    #[arg(long, env = "TEND_WEBHOOK_ALLOW_NETWORKS", default_value = "")]
    pub webhook_allow_networks: String,

    /// PEM CA certificates trusted for https:// endpoints besides the
    /// public roots (a clinic's internal CA).
    #[arg(long, env = "TEND_WEBHOOK_CA")]
    pub webhook_ca: Option<PathBuf>,

    /// Seconds a failing delivery is retried before the endpoint is
    /// disabled.
    #[arg(long, env = "TEND_WEBHOOK_RETRY_SECONDS", default_value_t = 86_400,
          value_parser = clap::value_parser!(u64).range(1..=2_592_000))]
    pub webhook_retry_seconds: u64,

    /// Milliseconds before the first retry; each next one doubles.
    #[arg(long, env = "TEND_WEBHOOK_BACKOFF_MS", default_value_t = 1000,
          value_parser = clap::value_parser!(u64).range(10..=600_000))]
    pub webhook_backoff_ms: u64,

    /// The longest wait between retries, in seconds.
    #[arg(long, env = "TEND_WEBHOOK_BACKOFF_MAX_SECONDS", default_value_t = 600,
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub webhook_backoff_max_seconds: u64,

    /// Seconds one delivery request may take, connecting included.
    #[arg(long, env = "TEND_WEBHOOK_TIMEOUT_SECONDS", default_value_t = 15,
          value_parser = clap::value_parser!(u64).range(1..=300))]
    pub webhook_timeout_seconds: u64,
}

/// TLS on the gRPC port.
#[derive(Debug, Args)]
pub(crate) struct TlsOptions {
    /// PEM certificate chain for the gRPC port, the server's first. With
    /// TEND_TLS_KEY, the port speaks TLS only.
    #[arg(long, env = "TEND_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key of the certificate (PKCS#8, PKCS#1 or SEC1).
    #[arg(long, env = "TEND_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// PEM CA certificates: every client must present a certificate one of
    /// them signed (mutual TLS).
    #[arg(long, env = "TEND_TLS_CLIENT_CA", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,

    /// Tenants bound to client certificates: `<tenant>=<dns name>[|<dns
    /// name>...]`, comma separated. A bound tenant's tokens are accepted
    /// only on a connection whose client certificate is valid for one of
    /// its names (a DNS subject alternative name).
    #[arg(long, env = "TEND_TLS_CLIENT_TENANTS", requires = "tls_client_ca")]
    pub tls_client_tenants: Option<String>,

    /// Seconds between looks at the TLS files for a rotation.
    #[arg(long, env = "TEND_TLS_RELOAD_SECONDS", default_value_t = 10,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub tls_reload_seconds: u64,
}

#[derive(Debug, Args)]
pub(crate) struct LogOptions {
    /// Log filter, in tracing's EnvFilter syntax.
    #[arg(long, env = "TEND_LOG", default_value = "info")]
    pub log: String,

    /// Log format; `auto` is JSON unless standard error is a terminal.
    #[arg(long, env = "TEND_LOG_FORMAT", value_enum, default_value_t = LogFormat::Auto)]
    pub log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum LogFormat {
    Auto,
    Json,
    Text,
}

impl DatabaseOptions {
    pub(crate) fn data_dir(&self) -> PathBuf {
        if let Some(dir) = &self.data_dir {
            return dir.clone();
        }
        let root = tend_local_postgres::running_as_root().unwrap_or(false);
        if root {
            // PostgreSQL runs as `postgres` then; root's home is closed to it.
            return PathBuf::from("/var/lib/tend");
        }
        if let Some(xdg) = std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
            return PathBuf::from(xdg).join("tend");
        }
        match std::env::var_os("HOME") {
            Some(home) => PathBuf::from(home).join(".local/share/tend"),
            None => PathBuf::from(".tend"),
        }
    }
}
