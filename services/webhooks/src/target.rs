//! Where webhooks may go: not a way into the operator's private network.
//!
//! An endpoint URL must be `https://` (or `http://` to a host the operator
//! names), carry no credentials, and its host must not be, or resolve to,
//! an internal address (loopback, private, link-local with the cloud
//! metadata service, shared, documentation and other special ranges)
//! unless the operator allows that network. The check runs when an
//! endpoint is registered and again at each connection, on the addresses
//! actually dialled (a name that later resolves inside is refused then),
//! and redirects are never followed.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use ipnet::IpNet;
use url::{Host, Url};

/// The operator's allowances.
#[derive(Debug, Clone, Default)]
pub struct Targets {
    /// Hosts (names or addresses, lower case) that may be called over
    /// plain `http://`.
    http_hosts: Vec<String>,
    /// Networks that may be called although internal.
    networks: Vec<IpNet>,
}

/// Why a URL or an address is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("is not a URL: {0}")]
    NotAUrl(String),
    #[error(
        "must be https:// (http:// only to a host the operator allows, TEND_WEBHOOK_ALLOW_HTTP_HOSTS)"
    )]
    Scheme,
    #[error("must not carry a user name or password")]
    Credentials,
    #[error("needs a host")]
    NoHost,
    #[error("must not carry a fragment")]
    Fragment,
    // The address is not in the message: for a name it would tell a
    // tenant how the operator's DNS resolves.
    #[error(
        "is, or resolves to, an internal address (loopback, private, link-local or another special range); the operator may allow its network (TEND_WEBHOOK_ALLOW_NETWORKS)"
    )]
    Internal(IpAddr),
    #[error("the host does not resolve")]
    Unresolved(String),
}

impl Targets {
    /// `http_hosts`: host names or addresses, comma separated; `networks`:
    /// CIDR blocks (or single addresses), comma separated.
    pub fn parse(http_hosts: &str, networks: &str) -> Result<Self, String> {
        let http_hosts = split(http_hosts)
            .map(|h| {
                if h.contains(['/', ':', ' ']) && h.parse::<IpAddr>().is_err() {
                    Err(format!(
                        "TEND_WEBHOOK_ALLOW_HTTP_HOSTS: {h:?} is not a host"
                    ))
                } else {
                    Ok(h.to_ascii_lowercase())
                }
            })
            .collect::<Result<_, _>>()?;
        let networks = split(networks)
            .map(|n| {
                n.parse::<IpNet>()
                    .or_else(|_| n.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| {
                        format!(
                            "TEND_WEBHOOK_ALLOW_NETWORKS: {n:?} is not a network like 10.0.0.0/8"
                        )
                    })
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            http_hosts,
            networks,
        })
    }

    /// The URL, if its form is allowed (the addresses its host resolves
    /// to are checked by `resolve`).
    pub fn check_url(&self, url: &str) -> Result<Url, Refused> {
        let parsed = Url::parse(url).map_err(|e| Refused::NotAUrl(e.to_string()))?;
        if !parsed.username().is_empty() || parsed.password().is_some() {
            return Err(Refused::Credentials);
        }
        if parsed.fragment().is_some() {
            return Err(Refused::Fragment);
        }
        let host = parsed.host().ok_or(Refused::NoHost)?;
        match parsed.scheme() {
            "https" => {}
            "http" if self.http_allowed(&host) => {}
            _ => return Err(Refused::Scheme),
        }
        if let Some(ip) = literal(&host) {
            self.check_ip(ip)?;
        }
        Ok(parsed)
    }

    fn http_allowed(&self, host: &Host<&str>) -> bool {
        let host = match host {
            Host::Domain(d) => d.to_ascii_lowercase(),
            Host::Ipv4(ip) => ip.to_string(),
            Host::Ipv6(ip) => ip.to_string(),
        };
        self.http_hosts.contains(&host)
    }

    /// Whether an address may be dialled.
    pub fn check_ip(&self, ip: IpAddr) -> Result<(), Refused> {
        let ip = ip.to_canonical();
        if internal(ip) && !self.networks.iter().any(|n| n.contains(&ip)) {
            return Err(Refused::Internal(ip));
        }
        Ok(())
    }

    /// The addresses a URL's host may be reached at: an address in the URL
    /// is checked as it is; a name is resolved and every address checked.
    /// A name with any internal address is refused as a whole, so that a
    /// receiver cannot hide an internal address among public ones.
    pub async fn resolve(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, Refused> {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if let Ok(ip) = host.parse::<IpAddr>() {
            self.check_ip(ip)?;
            return Ok(vec![SocketAddr::new(ip, port)]);
        }
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
            .await
            .map_err(|e| Refused::Unresolved(e.to_string()))?
            .collect();
        if addrs.is_empty() {
            return Err(Refused::Unresolved("no address".into()));
        }
        for a in &addrs {
            self.check_ip(a.ip())?;
        }
        Ok(addrs)
    }

    /// The resolver the HTTP client dials through.
    pub(crate) fn resolver(self: &Arc<Self>) -> Arc<Resolver> {
        Arc::new(Resolver(self.clone()))
    }
}

fn split(s: &str) -> impl Iterator<Item = &str> {
    s.split(',').map(str::trim).filter(|p| !p.is_empty())
}

fn literal(host: &Host<&str>) -> Option<IpAddr> {
    match host {
        Host::Ipv4(ip) => Some(IpAddr::V4(*ip)),
        Host::Ipv6(ip) => Some(IpAddr::V6(*ip)),
        Host::Domain(_) => None,
    }
}

/// Addresses that are not on the public internet.
pub fn internal(ip: IpAddr) -> bool {
    match ip.to_canonical() {
        IpAddr::V4(v4) => internal_v4(v4),
        IpAddr::V6(v6) => internal_v6(v6),
    }
}

fn internal_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local() // 169.254/16: cloud metadata services
        || ip.is_multicast()
        || ip.is_broadcast()
        || ip.is_documentation()
        || a == 0 // 0/8
        || (a == 100 && (64..128).contains(&b)) // 100.64/10, shared (CGNAT)
        || (a == 192 && b == 0 && c == 0) // 192.0.0/24, protocol assignments
        || (a == 198 && (b == 18 || b == 19)) // 198.18/15, benchmarking
        || a >= 240 // 240/4, reserved
        || ip == Ipv4Addr::new(168, 63, 129, 16) // Azure's host services
}

fn internal_v6(ip: Ipv6Addr) -> bool {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return internal_v4(v4);
    }
    let s = ip.segments();
    ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()
        || ip.is_unique_local() // fc00::/7
        || ip.is_unicast_link_local() // fe80::/10
        || (s[0] & 0xffc0) == 0xfec0 // fec0::/10, old site-local
        || (s[0] == 0x64 && s[1] == 0xff9b) // 64:ff9b::/96 and /48, NAT64
        || (s[0] == 0x100 && s[1] == 0 && s[2] == 0 && s[3] == 0) // 100::/64, discard
        || (s[0] == 0x2001 && s[1] == 0x0db8) // documentation
        || (s[0] == 0x2001 && s[1] == 0) // Teredo
        || s[0] == 0x2002 // 6to4: wraps any IPv4 address
        // ::/96, IPv4-compatible (deprecated), and ::ffff:0:0:0/96, IPv4-
        // translated (SIIT): both wrap any IPv4 address.
        || (s[0..6] == [0, 0, 0, 0, 0, 0])
        || (s[0..6] == [0, 0, 0, 0, 0xffff, 0])
}

/// reqwest's resolver: every address checked.
#[derive(Debug)]
pub(crate) struct Resolver(Arc<Targets>);

impl reqwest::dns::Resolve for Resolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let targets = self.0.clone();
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let addrs = targets
                .resolve(&host, 0)
                .await
                .map_err(|e| -> Box<dyn std::error::Error + Send + Sync> { Box::new(e) })?;
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(targets: &Targets, url: &str) -> Refused {
        targets.check_url(url).unwrap_err()
    }

    #[test]
    fn internal_ranges_are_refused_by_default() {
        let t = Targets::default();
        for url in [
            "https://127.0.0.1/hook",
            "https://10.1.2.3/hook",
            "https://172.16.0.1/hook",
            "https://192.168.1.1/hook",
            "https://169.254.169.254/latest/meta-data",
            "https://100.64.0.1/hook",
            "https://0.0.0.0/hook",
            "https://[::1]/hook",
            "https://[fd00::1]/hook",
            "https://[fe80::1]/hook",
            "https://[::ffff:127.0.0.1]/hook",
            "https://[::ffff:10.0.0.1]/hook",
            "https://[64:ff9b::a00:1]/hook",
            "https://[2002:a00:1::]/hook",
            "https://[::ffff:0:a00:1]/hook",
            "https://168.63.129.16/hook",
            // Other spellings of 127.0.0.1 are parsed as the address.
            "https://2130706433/hook",
            "https://0x7f.1/hook",
            "https://127.1/hook",
        ] {
            assert!(
                matches!(refused(&t, url), Refused::Internal(_)),
                "{url} was not refused as internal"
            );
        }
        for url in [
            "https://8.8.8.8/hook",
            "https://hooks.example.com/tend",
            "https://[2606:4700::1111]/hook",
        ] {
            assert!(t.check_url(url).is_ok(), "{url}");
        }
    }

    #[test]
    fn http_credentials_and_fragments_are_refused() {
        let t = Targets::default();
        assert_eq!(refused(&t, "http://hooks.example.com/x"), Refused::Scheme);
        assert_eq!(refused(&t, "ftp://hooks.example.com/x"), Refused::Scheme);
        assert_eq!(
            refused(&t, "https://u:p@hooks.example.com/x"),
            Refused::Credentials
        );
        assert_eq!(
            refused(&t, "https://hooks.example.com/x#a"),
            Refused::Fragment
        );
        assert!(matches!(refused(&t, "not a url"), Refused::NotAUrl(_)));
    }

    #[test]
    fn the_operator_allows_hosts_http_and_networks() {
        let t = Targets::parse("127.0.0.1, receiver.internal", "127.0.0.0/8, 10.2.0.0/16").unwrap();
        assert!(t.check_url("http://127.0.0.1:8080/hook").is_ok());
        assert!(t.check_url("http://receiver.internal/hook").is_ok());
        assert!(t.check_url("https://10.2.3.4/hook").is_ok());
        assert!(matches!(
            refused(&t, "https://10.3.0.1/hook"),
            Refused::Internal(_)
        ));
        assert_eq!(refused(&t, "http://10.2.3.4/hook"), Refused::Scheme);
        assert!(Targets::parse("", "10.0.0.0/33").is_err());
    }

    #[tokio::test]
    async fn a_name_is_checked_on_every_address_it_resolves_to() {
        let t = Targets::default();
        assert!(matches!(
            t.resolve("localhost", 80).await,
            Err(Refused::Internal(_))
        ));
        let allowed = Targets::parse("", "127.0.0.0/8, ::1").unwrap();
        assert!(allowed.resolve("localhost", 80).await.is_ok());
        assert!(matches!(
            t.resolve("no-such-host.invalid", 80).await,
            Err(Refused::Unresolved(_))
        ));
    }
}
