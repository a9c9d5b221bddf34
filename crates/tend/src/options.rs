//! The options of `tend serve` (and `tend demo`'s clock) checked once, in
//! one place, before any connection is made: what passes is typed for the
//! wiring in `serve.rs`, which checks nothing again.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use tend_auth::{TokenHash, Tokens};
use tend_domain::arc::Rules;
use tend_event_store::TenantId;
use tend_practice_log::PracticeOptions;
use tend_privacy::{MasterKeys, Recipients};
use tend_projections::RunnerOptions;
use tend_protocol_scheduler::WorkerOptions;
use tend_service_kit::{Clock, OffsetClock, SystemClock};

use crate::Result;
use crate::config::{ArcOptions, ClockOptions, DatabaseOptions, ServeOptions};
use crate::keys;
use crate::tls::{self, TlsFiles};

/// What webhooks may reach with the embedded database and no allowances
/// set: a receiver on this machine.
pub(crate) const DEV_WEBHOOK_HOSTS: &str = "127.0.0.1,localhost,::1";
pub(crate) const DEV_WEBHOOK_NETWORKS: &str = "127.0.0.0/8,::1/128";

/// The tenant of the development token issued with the embedded database.
pub(crate) const DEV_TENANT: &str = "dev";

pub(crate) const MASTER_KEYS_REQUIRED: &str = "TEND_MASTER_KEYS is required: participants' references and notes are sealed with \
     data keys that a master key wraps (make one with `tend keys new --id k1`)";

/// The FHIR endpoint's settings.
pub(crate) struct Fhir {
    pub listen: SocketAddr,
    pub base_url: Option<String>,
    pub jobs: tend_fhir_service::Settings,
}

/// `tend serve`'s options, checked.
pub(crate) struct Serve {
    pub listen: SocketAddr,
    /// Where plain-text health for probes listens, if anywhere.
    pub health_listen: Option<SocketAddr>,
    /// FHIR over HTTP: where, and how its exports run; `None`: not served.
    pub fhir: Option<Fhir>,
    pub migrate: bool,
    /// Events folded into the states kept in memory.
    pub fold_cache_events: usize,
    /// Nice value of the background runtime's thread.
    pub background_nice: i32,
    pub tokens: Tokens,
    /// Tenants whose tokens work only with a client certificate of theirs.
    pub bindings: tend_auth::CertificateBindings,
    /// The development token issued with the embedded database, to print.
    pub dev_token: Option<String>,
    /// The configured master keys; without them the embedded database
    /// brings a development one (`keys::or_development`).
    pub master_keys: Option<MasterKeys>,
    pub recipients: Recipients,
    pub arc_rules: Rules,
    /// How this server runs the arc projection; `None`: it does not.
    pub arc_projection: Option<RunnerOptions>,
    pub worker: WorkerOptions,
    pub practice: PracticeOptions,
    pub shutdown_grace: Duration,
    pub shutdown_drain: Duration,
    /// TLS on the gRPC port: where the files are, and what they held at
    /// start-up; `None`: plain TCP.
    pub tls: Option<(TlsFiles, tls::Loaded)>,
    /// Browser origins allowed to call gRPC-Web.
    pub web_origins: Vec<http::HeaderValue>,
    /// Whether webhooks have the development allowances (loopback).
    pub webhook_development: bool,
    /// Where webhooks may go.
    pub webhook_targets: std::sync::Arc<tend_webhooks::Targets>,
    /// How this server delivers webhooks; `None`: it does not.
    pub webhooks: Option<tend_webhooks::DeliveryOptions>,
    /// The CA certificates trusted for endpoints besides the public roots.
    pub webhook_roots: Vec<rustls::pki_types::CertificateDer<'static>>,
    /// The test clock, if one is asked for.
    pub test_clock: Option<TestClock>,
    pub database: DatabaseOptions,
}

impl ServeOptions {
    pub(crate) fn validate(self) -> Result<Serve> {
        let test_clock = self.clock.start()?;
        // A lease shorter than two ticks would change hands between rounds.
        if self.scheduler_lease_seconds * 1000 <= 2 * self.scheduler_tick_ms {
            return Err(
                "TEND_SCHEDULER_LEASE_SECONDS must be more than twice TEND_SCHEDULER_TICK_MS"
                    .into(),
            );
        }
        let lease_ttl = Duration::from_secs(self.scheduler_lease_seconds);
        let (tokens, dev_token) = tokens(
            self.auth_tokens.as_deref(),
            self.database.database_url.is_none(),
        )?;
        if let Some(url) = &self.database.database_url {
            crate::database::parse_url(url)?;
        }
        let master_keys = keys::configured(&self.keys)?;
        let tls = match (&self.tls.tls_cert, &self.tls.tls_key) {
            (Some(cert), Some(key)) => {
                let files = TlsFiles {
                    cert: cert.clone(),
                    key: key.clone(),
                    client_ca: self.tls.tls_client_ca.clone(),
                    reload_every: Duration::from_secs(self.tls.tls_reload_seconds),
                };
                let loaded = files.load()?;
                Some((files, loaded))
            }
            _ => None,
        };
        let bindings = match &self.tls.tls_client_tenants {
            Some(spec) => tend_auth::CertificateBindings::parse(spec)
                .map_err(|e| format!("TEND_TLS_CLIENT_TENANTS: {e}"))?,
            None => tend_auth::CertificateBindings::default(),
        };
        let web_origins = web_origins(self.grpc_web_origins.as_deref())?;
        let w = &self.webhooks;
        // The embedded database is development on one machine: webhooks to
        // a receiver on it (loopback, over http) are allowed unless the
        // allowances are set. A deployment has none by default.
        let development = self.database.database_url.is_none()
            && w.webhook_allow_http_hosts.is_empty()
            && w.webhook_allow_networks.is_empty();
        let webhook_targets = std::sync::Arc::new(if development {
            tend_webhooks::Targets::parse(DEV_WEBHOOK_HOSTS, DEV_WEBHOOK_NETWORKS)?
        } else {
            tend_webhooks::Targets::parse(&w.webhook_allow_http_hosts, &w.webhook_allow_networks)?
        });
        let webhook_roots = match &w.webhook_ca {
            None => vec![],
            Some(path) => {
                use rustls::pki_types::pem::PemObject;
                let roots = rustls::pki_types::CertificateDer::pem_file_iter(path)
                    .and_then(|certs| certs.collect::<std::result::Result<Vec<_>, _>>())
                    .map_err(|e| format!("TEND_WEBHOOK_CA {}: {e}", path.display()))?;
                if roots.is_empty() {
                    return Err(format!(
                        "TEND_WEBHOOK_CA {}: holds no certificate",
                        path.display()
                    )
                    .into());
                }
                roots
            }
        };
        let webhooks = w.webhooks.then(|| tend_webhooks::DeliveryOptions {
            retry_period: Duration::from_secs(w.webhook_retry_seconds),
            backoff_first: Duration::from_millis(w.webhook_backoff_ms),
            backoff_max: Duration::from_secs(w.webhook_backoff_max_seconds),
            timeout: Duration::from_secs(w.webhook_timeout_seconds),
            lease_ttl,
        });
        if master_keys.is_none() && self.database.database_url.is_some() {
            return Err(MASTER_KEYS_REQUIRED.into());
        }
        if let Some(base) = &self.fhir_base_url {
            let ok = url::Url::parse(base)
                .is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some());
            if !ok {
                return Err(format!(
                    "TEND_FHIR_BASE_URL `{base}` is not an http(s) URL such as https://tend.example.org/fhir"
                )
                .into());
            }
        }
        // Each export holds two connections (its lock and its snapshot):
        // the exports must leave most of the pool to calls.
        if self.fhir_listen.is_some()
            && u32::from(self.fhir_export_workers) * 2 > self.database.db_max_connections / 2
        {
            return Err(format!(
                "TEND_FHIR_EXPORT_WORKERS={} needs {} database connections, more than half of TEND_DB_MAX_CONNECTIONS={}: lower it, or raise TEND_DB_MAX_CONNECTIONS",
                self.fhir_export_workers,
                u32::from(self.fhir_export_workers) * 2,
                self.database.db_max_connections
            )
            .into());
        }
        let fhir = self.fhir_listen.map(|listen| Fhir {
            listen,
            base_url: self.fhir_base_url.clone(),
            jobs: tend_fhir_service::Settings {
                workers: usize::from(self.fhir_export_workers),
                per_tenant: i64::from(self.fhir_exports_per_tenant),
                retention: Duration::from_secs(u64::from(self.fhir_export_retention_hours) * 3600),
                ..Default::default()
            },
        });
        Ok(Serve {
            listen: self.listen,
            health_listen: self.health_listen,
            fhir,
            migrate: self.migrate,
            fold_cache_events: self.fold_cache_events,
            background_nice: self.background_nice,
            tokens,
            dev_token,
            master_keys,
            bindings,
            tls,
            web_origins,
            webhook_development: development,
            webhook_targets,
            webhooks,
            webhook_roots,
            recipients: keys::recipients(&self.keys)?,
            arc_rules: arc_rules(&self.arc)?,
            arc_projection: self.arc.arc_projection.then(|| RunnerOptions {
                lease_ttl,
                ..Default::default()
            }),
            worker: WorkerOptions {
                tick_interval: Duration::from_millis(self.scheduler_tick_ms),
                lease_ttl,
                miss_grace: jiff::SignedDuration::from_mins(i64::from(
                    self.scheduler_miss_grace_minutes,
                )),
                ..WorkerOptions::default()
            },
            practice: PracticeOptions {
                limits: tend_domain::practice::Limits {
                    backdating: jiff::SignedDuration::from_hours(
                        24 * i64::from(self.practice_backdate_days),
                    ),
                },
            },
            shutdown_grace: Duration::from_secs(self.shutdown_grace_seconds),
            shutdown_drain: Duration::from_secs(self.shutdown_drain_seconds),
            test_clock,
            database: self.database,
        })
    }
}

/// A test clock: where it starts and how fast it runs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TestClock {
    start: Timestamp,
    rate: u32,
    since: Option<Timestamp>,
}

impl ClockOptions {
    /// The test clock, if one is asked for (and allowed).
    pub(crate) fn start(&self) -> Result<Option<TestClock>> {
        let Some(start) = test_clock(self.test_clock.as_deref(), cfg!(debug_assertions))? else {
            return Ok(None);
        };
        let since = match self.test_clock_since.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(value) => Some(value.parse::<Timestamp>().map_err(|e| {
                format!("TEND_TEST_CLOCK_SINCE {value:?} is not an RFC 3339 instant: {e}")
            })?),
        };
        Ok(Some(TestClock {
            start,
            rate: self.test_clock_rate,
            since,
        }))
    }
}

/// The clock every service, worker and projection reads: the system's, or
/// a test clock, said in the log.
pub(crate) fn clock(test_clock: Option<TestClock>) -> Arc<dyn Clock> {
    match test_clock {
        None => Arc::new(SystemClock),
        Some(TestClock { start, rate, since }) => {
            tracing::warn!(%start, rate, "the clock is a test clock starting at {start}, running {rate}x (TEND_TEST_CLOCK, for tests only)");
            let clock = OffsetClock::starting_at(start).at_rate(rate);
            Arc::new(since.map_or(clock, |since| clock.since(since)))
        }
    }
}

/// A test clock moves "now" for every participant of every tenant, so a
/// release build refuses it rather than trusting the environment.
fn test_clock(value: Option<&str>, debug_build: bool) -> Result<Option<Timestamp>> {
    let Some(value) = value.map(str::trim).filter(|v| !v.is_empty()) else {
        return Ok(None);
    };
    if !debug_build {
        return Err("TEND_TEST_CLOCK is for tests only: release builds refuse it".into());
    }
    let start = value.parse::<Timestamp>().map_err(|e| {
        format!(
            "TEND_TEST_CLOCK {value:?} is not an RFC 3339 instant (like 2026-03-01T08:00:00Z): {e}"
        )
    })?;
    Ok(Some(start))
}

/// The partner tokens; with the embedded database and none configured, a
/// development token, fresh each start and never written down.
fn tokens(spec: Option<&str>, embedded: bool) -> Result<(Tokens, Option<String>)> {
    match spec {
        Some(spec) => {
            let tokens = Tokens::parse(spec)?;
            if tokens.is_empty() {
                return Err("TEND_AUTH_TOKENS holds no token entry".into());
            }
            Ok((tokens, None))
        }
        None if embedded => {
            let token = tend_auth::generate_token()?;
            let mut tokens = Tokens::default();
            tokens.insert(TokenHash::of(&token), TenantId::new(DEV_TENANT)?)?;
            Ok((tokens, Some(token)))
        }
        None => Err(
            "TEND_AUTH_TOKENS is not set: with an external database Tend needs partner \
                     tokens (issue one with `tend token new --tenant <tenant>`)"
                .into(),
        ),
    }
}

/// `TEND_GRPC_WEB_ORIGINS`: exact origins (scheme, host, port), never a
/// wildcard, since the calls carry tokens.
fn web_origins(spec: Option<&str>) -> Result<Vec<http::HeaderValue>> {
    let mut origins = Vec::new();
    for origin in spec
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|o| !o.is_empty())
    {
        let (scheme, rest) = origin.split_once("://").unwrap_or(("", ""));
        let well_formed = matches!(scheme, "https" | "http")
            && !rest.is_empty()
            && !rest.contains(['/', '*', ' ', '?', '#']);
        if !well_formed {
            return Err(format!(
                "TEND_GRPC_WEB_ORIGINS: {origin:?} is not an origin like https://portal.clinic.example (scheme and host, an optional port, no path, no wildcard)"
            )
            .into());
        }
        origins.push(
            http::HeaderValue::from_str(origin)
                .map_err(|e| format!("TEND_GRPC_WEB_ORIGINS: {origin:?}: {e}"))?,
        );
    }
    Ok(origins)
}

fn arc_rules(options: &ArcOptions) -> Result<Rules> {
    let ratio = |name: &str, v: f64| {
        if v > 0.0 && v <= 1.0 {
            Ok(v)
        } else {
            Err(format!("{name} must be above 0 and at most 1"))
        }
    };
    let critic_ratio = ratio("TEND_ARC_CRITIC_RATIO", options.arc_critic_ratio)?;
    let critic_clear_ratio = ratio(
        "TEND_ARC_CRITIC_CLEAR_RATIO",
        options.arc_critic_clear_ratio,
    )?;
    if critic_clear_ratio < critic_ratio {
        return Err("TEND_ARC_CRITIC_CLEAR_RATIO must be at least TEND_ARC_CRITIC_RATIO".into());
    }
    if !(options.arc_rise_sd > 0.0 && options.arc_rise_sd.is_finite()) {
        return Err("TEND_ARC_RISE_SD must be a positive number".into());
    }
    Ok(Rules {
        critic_ratio,
        critic_clear_ratio,
        missed_in_a_row: options.arc_missed_in_a_row,
        rise_sd: options.arc_rise_sd,
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::config::{Cli, Command};

    /// `tend serve` with an external database, a token and `args`.
    fn serve(args: &[&str]) -> Result<Serve> {
        let token = format!("acme=sha256:{}", "ab".repeat(32));
        let keys = format!("k1:{}", "A".repeat(43) + "=");
        let argv = ["tend", "serve", "--database-url", "postgres://db/tend"]
            .into_iter()
            .chain(["--auth-tokens", &token, "--master-keys", &keys])
            .chain(args.iter().copied());
        let Command::Serve(options) = Cli::try_parse_from(argv)?.command else {
            unreachable!("parsed `tend serve`");
        };
        options.validate()
    }

    fn refused(args: &[&str]) -> String {
        match serve(args) {
            Ok(_) => panic!("{args:?} was accepted"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn the_defaults_pass() {
        let serve = serve(&[]).unwrap();
        assert_eq!(serve.arc_rules, Rules::default());
        assert_eq!(serve.worker.lease_ttl, Duration::from_secs(10));
        assert!(serve.dev_token.is_none());
        assert!(serve.test_clock.is_none());
    }

    #[test]
    fn only_the_embedded_database_lets_webhooks_reach_this_machine() {
        let external = serve(&[]).unwrap();
        assert!(!external.webhook_development);
        assert!(
            external
                .webhook_targets
                .check_url("http://127.0.0.1:9000/x")
                .is_err()
        );
        let argv = ["tend", "serve"];
        let Command::Serve(options) = Cli::try_parse_from(argv).unwrap().command else {
            unreachable!("parsed `tend serve`");
        };
        let embedded = options.validate().unwrap();
        assert!(embedded.webhook_development);
        assert!(
            embedded
                .webhook_targets
                .check_url("http://127.0.0.1:9000/x")
                .is_ok()
        );
        assert!(
            embedded
                .webhook_targets
                .check_url("https://10.0.0.1/x")
                .is_err()
        );
    }

    #[test]
    fn grpc_web_origins_are_exact() {
        assert_eq!(
            web_origins(Some("https://portal.clinic.example, http://localhost:5173"))
                .unwrap()
                .len(),
            2
        );
        for bad in [
            "*",
            "https://*.clinic.example",
            "portal.clinic.example",
            "https://a/b",
        ] {
            assert!(web_origins(Some(bad)).is_err(), "{bad}");
        }
        assert!(web_origins(None).unwrap().is_empty());
    }

    #[test]
    fn tls_files_that_do_not_load_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("tls.crt");
        std::fs::write(&cert, "not a certificate").unwrap();
        let e = refused(&[
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            dir.path().join("missing.key").to_str().unwrap(),
        ]);
        assert!(
            e.starts_with("TEND_TLS_KEY") || e.starts_with("TEND_TLS_CERT"),
            "{e}"
        );
    }

    #[test]
    fn the_background_nice_value_is_kept_within_what_a_thread_may_lower_itself_to() {
        assert_eq!(serve(&[]).unwrap().background_nice, 0);
        assert_eq!(
            serve(&["--background-nice", "10"]).unwrap().background_nice,
            10
        );
        for bad in ["--background-nice=20", "--background-nice=-1"] {
            let e = refused(&[bad]);
            assert!(
                e.contains("--background-nice") && e.contains("0..=19"),
                "{e}"
            );
        }
    }

    #[test]
    fn a_lease_of_two_ticks_or_less_is_refused() {
        assert_eq!(
            refused(&[
                "--scheduler-lease-seconds",
                "2",
                "--scheduler-tick-ms",
                "1000"
            ]),
            "TEND_SCHEDULER_LEASE_SECONDS must be more than twice TEND_SCHEDULER_TICK_MS"
        );
    }

    #[test]
    fn arc_ratios_out_of_order_or_range_are_refused() {
        assert_eq!(
            refused(&[
                "--arc-critic-ratio",
                "0.8",
                "--arc-critic-clear-ratio",
                "0.6"
            ]),
            "TEND_ARC_CRITIC_CLEAR_RATIO must be at least TEND_ARC_CRITIC_RATIO"
        );
        assert_eq!(
            refused(&["--arc-critic-ratio", "1.5"]),
            "TEND_ARC_CRITIC_RATIO must be above 0 and at most 1"
        );
    }

    #[test]
    fn an_external_database_needs_master_keys_and_a_url_that_parses() {
        let token = format!("acme=sha256:{}", "ab".repeat(32));
        let parse = |args: &[&str]| {
            let argv = ["tend", "serve", "--auth-tokens", &token]
                .into_iter()
                .chain(args.iter().copied());
            let Command::Serve(options) = Cli::try_parse_from(argv).unwrap().command else {
                unreachable!("parsed `tend serve`");
            };
            options.validate().err().map(|e| e.to_string())
        };
        assert_eq!(
            parse(&["--database-url", "postgres://db/tend"]).as_deref(),
            Some(MASTER_KEYS_REQUIRED)
        );
        let e = parse(&["--database-url", "postgres://db:notaport/tend"]).unwrap();
        assert!(
            e.starts_with("TEND_DATABASE_URL is not a PostgreSQL URL"),
            "{e}"
        );
    }

    #[test]
    fn an_external_database_needs_tokens() {
        let e = tokens(None, false).err().unwrap().to_string();
        assert!(e.starts_with("TEND_AUTH_TOKENS is not set"), "{e}");
        assert!(tokens(Some(""), false).is_err());
    }

    #[test]
    fn the_embedded_database_issues_a_development_token() {
        let (tokens, token) = tokens(None, true).unwrap();
        assert!(!tokens.is_empty());
        assert!(token.is_some());
    }

    #[test]
    fn the_test_clock_starts_where_it_is_told() {
        let clock = serve(&[
            "--test-clock",
            "2026-03-01T08:00:00Z",
            "--test-clock-rate",
            "60",
        ])
        .unwrap()
        .test_clock
        .unwrap();
        assert_eq!(
            (clock.start, clock.rate),
            ("2026-03-01T08:00:00Z".parse().unwrap(), 60)
        );
        assert!(serve(&["--test-clock-rate", "0"]).is_err());
        assert_eq!(test_clock(Some(" "), true).unwrap(), None);
    }

    #[test]
    fn release_builds_refuse_a_test_clock() {
        assert_eq!(
            test_clock(Some("2026-03-01T08:00:00Z"), false)
                .unwrap_err()
                .to_string(),
            "TEND_TEST_CLOCK is for tests only: release builds refuse it"
        );
        assert_eq!(test_clock(None, false).unwrap(), None);
    }

    #[test]
    fn a_test_clock_that_is_not_an_instant_is_refused_by_name() {
        let e = test_clock(Some("tomorrow"), true).unwrap_err().to_string();
        assert!(e.starts_with("TEND_TEST_CLOCK \"tomorrow\""), "{e}");
    }
}
