//! Where webhooks may be sent: the guard against server-side request forgery.
//!
//! Webhook URLs come from tenants (subscriptions through the admin API or config, and a callback
//! URL per action), so without a guard the gateway would post, from inside the network, to
//! whatever a tenant names: the cloud metadata endpoint (and its credentials), the gateway's own
//! loopback ports, link-local services. [`Policy::check_url`] refuses such URLs when they are
//! given, and [`client`] resolves names through [`GuardedResolver`], which applies the same
//! address check at connect time.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use reqwest::Url;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use reqwest::header::HeaderValue;

use crate::net::Cidr;

/// Longest webhook URL accepted (bytes): longer ones are not addresses anybody types, and they
/// end up in every delivery row and log line.
const MAX_URL_LEN: usize = 2048;
/// How long a delivery waits for a TCP (and TLS) connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The AWS instance metadata service over IPv6 (Nitro instances).
const AWS_METADATA_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x0ec2, 0, 0, 0, 0, 0, 0x0254);
/// The Alibaba Cloud instance metadata service.
const ALIBABA_METADATA: Ipv4Addr = Ipv4Addr::new(100, 100, 100, 200);

/// What destinations are allowed (server-wide `[webhooks]` settings).
#[derive(Clone, Debug, Default)]
pub struct Policy {
    /// `http://` allowed (default: https only).
    pub allow_http: bool,
    /// Address blocks allowed even though they are refused by default (e.g. `127.0.0.0/8` for a
    /// receiver on the same host).
    pub allowed_networks: Vec<Cidr>,
}

/// Why an address is refused by default (part of a [`Refused`] message).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Blocked {
    /// 127.0.0.0/8, ::1: the gateway's own ports.
    Loopback,
    /// 0.0.0.0/8, ::: connecting to them reaches the local host.
    Unspecified,
    /// 169.254.0.0/16, fe80::/10: where the cloud metadata services live.
    LinkLocal,
    /// 224.0.0.0/4, ff00::/8: not one receiver.
    Multicast,
    /// 255.255.255.255.
    Broadcast,
    /// A cloud metadata address outside the link-local ranges (fd00:ec2::254, 100.100.100.200).
    Metadata,
}

impl std::fmt::Display for Blocked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Blocked::Loopback => "a loopback address",
            Blocked::Unspecified => "an unspecified address",
            Blocked::LinkLocal => "a link-local address (cloud metadata)",
            Blocked::Multicast => "a multicast address",
            Blocked::Broadcast => "the broadcast address",
            Blocked::Metadata => "a cloud metadata address",
        })
    }
}

/// Why a webhook URL is refused. The messages are shown to the API caller (a problem's
/// `detail`), so they name the setting that would allow the URL where there is one.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("not a URL")]
    NotUrl,
    #[error("the URL is longer than {MAX_URL_LEN} characters")]
    TooLong,
    #[error("webhook URLs must use https (webhooks.allow_http allows http)")]
    HttpNotAllowed,
    #[error("webhook URLs must use https or http, not {0}")]
    Scheme(String),
    #[error("the URL has no host")]
    NoHost,
    #[error("the URL may not carry a user or password")]
    Userinfo,
    #[error("the URL may not carry a fragment (#...)")]
    Fragment,
    /// An IP address (a URL's literal host, or one checked directly).
    #[error("{ip} is {kind}; webhooks.allowed_networks can allow it")]
    Address { ip: IpAddr, kind: Blocked },
    /// A host name whose addresses are all refused; `ip` is the first of them.
    #[error("the host {host} resolves to {ip}, {kind}; webhooks.allowed_networks can allow it")]
    Resolves { host: String, ip: IpAddr, kind: Blocked },
    #[error("the host {0} did not resolve")]
    Unresolved(String),
}

impl Policy {
    /// Checks a URL's form when it is given (so the caller learns at once, not at the first
    /// delivery): an absolute http(s) URL (http only with `allow_http`), a host, no userinfo
    /// (credentials would end up in logs and delivery rows), at most 2048 bytes, no fragment.
    /// An IP-literal host is checked with [`Policy::check_ip`]; a name is checked when it is
    /// resolved, by [`GuardedResolver`].
    pub fn check_url(&self, url: &str) -> Result<Url, Refused> {
        if url.len() > MAX_URL_LEN {
            return Err(Refused::TooLong);
        }
        let parsed = Url::parse(url).map_err(|_| Refused::NotUrl)?;
        if parsed.as_str().len() > MAX_URL_LEN {
            return Err(Refused::TooLong);
        }
        match parsed.scheme() {
            "https" => {}
            "http" if self.allow_http => {}
            "http" => return Err(Refused::HttpNotAllowed),
            other => return Err(Refused::Scheme(other.to_owned())),
        }
        if !parsed.username().is_empty() || parsed.password().is_some() {
            return Err(Refused::Userinfo);
        }
        if parsed.fragment().is_some() {
            return Err(Refused::Fragment);
        }
        // The parser has normalized IPv4 hosts (`0x7f.1` is `127.0.0.1`) and bracketed IPv6.
        let host = parsed.host_str().filter(|h| !h.is_empty()).ok_or(Refused::NoHost)?;
        let literal = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
        if let Ok(ip) = literal.parse::<IpAddr>() {
            self.check_ip(ip)?;
        }
        Ok(parsed)
    }

    /// An address is refused when it is loopback (127.0.0.0/8, ::1), unspecified (0.0.0.0/8,
    /// ::), link-local (169.254.0.0/16, which holds the AWS/GCP/Azure metadata address
    /// 169.254.169.254, and fe80::/10), multicast, broadcast (255.255.255.255), the AWS IPv6
    /// metadata address fd00:ec2::254 or 100.100.100.200 (Alibaba metadata), or an IPv4 one of
    /// those written as IPv6 (IPv4-mapped `::ffff:a.b.c.d`, IPv4-compatible `::a.b.c.d`, NAT64
    /// `64:ff9b::a.b.c.d`), unless it is in `allowed_networks`. Private RFC 1918 and ULA
    /// networks are allowed: a SOC's SOAR usually lives on one.
    pub fn check_ip(&self, ip: IpAddr) -> Result<(), Refused> {
        match blocked(ip) {
            Some(kind) if !self.allows(ip) => Err(Refused::Address { ip, kind }),
            _ => Ok(()),
        }
    }

    fn allows(&self, ip: IpAddr) -> bool {
        let embedded = match ip {
            IpAddr::V6(v6) => embedded_v4(v6).map(IpAddr::V4),
            IpAddr::V4(_) => None,
        };
        self.allowed_networks
            .iter()
            .any(|net| net.contains(ip) || embedded.is_some_and(|v4| net.contains(v4)))
    }
}

fn blocked(ip: IpAddr) -> Option<Blocked> {
    match ip {
        IpAddr::V4(v4) => blocked_v4(v4),
        IpAddr::V6(v6) => blocked_v6(v6),
    }
}

fn blocked_v4(ip: Ipv4Addr) -> Option<Blocked> {
    if ip.is_loopback() {
        Some(Blocked::Loopback)
    } else if ip.octets()[0] == 0 {
        Some(Blocked::Unspecified)
    } else if ip.is_link_local() {
        Some(Blocked::LinkLocal)
    } else if ip.is_multicast() {
        Some(Blocked::Multicast)
    } else if ip.is_broadcast() {
        Some(Blocked::Broadcast)
    } else if ip == ALIBABA_METADATA {
        Some(Blocked::Metadata)
    } else {
        None
    }
}

fn blocked_v6(ip: Ipv6Addr) -> Option<Blocked> {
    if ip.is_loopback() {
        Some(Blocked::Loopback)
    } else if ip.is_unspecified() {
        Some(Blocked::Unspecified)
    } else if let Some(v4) = embedded_v4(ip) {
        blocked_v4(v4)
    } else if ip.is_multicast() {
        Some(Blocked::Multicast)
    } else if ip.segments()[0] & 0xffc0 == 0xfe80 {
        Some(Blocked::LinkLocal)
    } else if ip == AWS_METADATA_V6 {
        Some(Blocked::Metadata)
    } else {
        None
    }
}

/// The IPv4 address inside an IPv4-mapped (`::ffff:0:0/96`), IPv4-compatible (`::/96`, but
/// not `::` and `::1`) or NAT64 (`64:ff9b::/96`) address: forms that reach that IPv4 address.
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = ip.segments();
    let low = Ipv4Addr::from(u32::try_from(u128::from(ip) & 0xffff_ffff).ok()?);
    let mapped = s[..5] == [0; 5] && s[5] == 0xffff;
    let compatible = s[..6] == [0; 6] && !ip.is_loopback() && !ip.is_unspecified();
    let nat64 = s[..6] == [0x64, 0xff9b, 0, 0, 0, 0];
    (mapped || compatible || nat64).then_some(low)
}

/// A `reqwest::dns::Resolve` implementation that resolves with the system resolver and drops
/// every address [`Policy::check_ip`] refuses, failing the lookup with the [`Refused`] reason
/// when none is left. The check happens at connect time, on the addresses actually connected
/// to, so a DNS answer that changes after the URL was validated (DNS rebinding) cannot reach a
/// refused address.
pub struct GuardedResolver {
    policy: Arc<Policy>,
}

impl GuardedResolver {
    /// A resolver applying `policy` (the one the URLs were checked with).
    pub fn new(policy: Policy) -> GuardedResolver {
        GuardedResolver { policy: Arc::new(policy) }
    }
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = Arc::clone(&self.policy);
        let host = name.as_str().to_owned();
        Box::pin(async move {
            // A failed lookup and an empty answer read the same to the caller.
            let found: Vec<SocketAddr> = match tokio::net::lookup_host((host.as_str(), 0)).await {
                Ok(found) => found.collect(),
                Err(_) => Vec::new(),
            };
            let mut refused = None;
            let allowed: Vec<SocketAddr> = found
                .into_iter()
                .filter(|addr| match policy.check_ip(addr.ip()) {
                    Ok(()) => true,
                    Err(reason) => {
                        refused.get_or_insert(reason);
                        false
                    }
                })
                .collect();
            if !allowed.is_empty() {
                let addrs: Addrs = Box::new(allowed.into_iter());
                return Ok(addrs);
            }
            Err(match refused {
                Some(Refused::Address { ip, kind }) => Refused::Resolves { host, ip, kind },
                Some(other) => other,
                None => Refused::Unresolved(host),
            }
            .into())
        })
    }
}

/// The HTTP client webhook deliveries use: names resolve through [`GuardedResolver`], no
/// redirect is followed (a redirect could lead to a refused address, bypassing the check; a 3xx
/// is the receiver's answer), no proxy from the environment is used (the proxy, not the guard,
/// would resolve the name), https only unless `allow_http`, a connect timeout of 5 s and the
/// given overall `timeout`, user agent `edrgate-webhooks/<version>`.
///
/// IP-literal URLs do not go through the resolver, so the deliverer must call
/// [`Policy::check_url`] on every URL before sending it (including URLs stored before a policy
/// change).
pub fn client(policy: Policy, timeout: Duration) -> reqwest::Result<reqwest::Client> {
    let https_only = !policy.allow_http;
    reqwest::Client::builder()
        .dns_resolver(GuardedResolver::new(policy))
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .https_only(https_only)
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(timeout)
        .user_agent(HeaderValue::from_static(concat!(
            "edrgate-webhooks/",
            env!("CARGO_PKG_VERSION")
        )))
        .build()
}

/// The [`Refused`] reason inside a delivery error, when the guard refused the connection: so
/// the delivery record and log say why rather than just "error sending request".
pub fn refusal(error: &reqwest::Error) -> Option<&Refused> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(error) = source {
        if let Some(refused) = error.downcast_ref::<Refused>() {
            return Some(refused);
        }
        source = error.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allowing(networks: &[&str]) -> Policy {
        Policy {
            allow_http: true,
            allowed_networks: networks.iter().map(|n| Cidr::parse(n).unwrap()).collect(),
        }
    }

    #[test]
    fn https_is_required_unless_http_is_allowed() {
        let strict = Policy::default();
        assert!(strict.check_url("https://soar.example.com/hook").is_ok());
        let err = strict.check_url("http://soar.example.com/hook").unwrap_err();
        assert_eq!(err, Refused::HttpNotAllowed);
        assert!(err.to_string().contains("webhooks.allow_http"));
        let lax = Policy { allow_http: true, ..Policy::default() };
        assert!(lax.check_url("http://soar.example.com/hook").is_ok());
        assert_eq!(
            lax.check_url("ftp://soar.example.com/hook"),
            Err(Refused::Scheme("ftp".into()))
        );
    }

    #[test]
    fn malformed_urls_are_refused() {
        let policy = Policy::default();
        assert_eq!(policy.check_url("soar.example.com/hook"), Err(Refused::NotUrl));
        assert_eq!(policy.check_url(""), Err(Refused::NotUrl));
        assert_eq!(policy.check_url("https://user:pass@soar.example.com/"), Err(Refused::Userinfo));
        assert_eq!(policy.check_url("https://user@soar.example.com/"), Err(Refused::Userinfo));
        assert_eq!(policy.check_url("https://soar.example.com/#frag"), Err(Refused::Fragment));
        let long = format!("https://soar.example.com/{}", "a".repeat(MAX_URL_LEN));
        assert_eq!(policy.check_url(&long), Err(Refused::TooLong));
        let max = format!("https://soar.example.com/{}", "a".repeat(MAX_URL_LEN - 25));
        assert_eq!(max.len(), MAX_URL_LEN);
        assert!(policy.check_url(&max).is_ok());
    }

    #[test]
    fn refused_ip_literals() {
        let policy = allowing(&[]);
        for (url, kind) in [
            ("https://127.0.0.1/", Blocked::Loopback),
            ("https://127.1.2.3:8443/", Blocked::Loopback),
            ("https://[::1]/", Blocked::Loopback),
            ("https://169.254.169.254/latest/meta-data/", Blocked::LinkLocal),
            ("https://[fe80::1]/", Blocked::LinkLocal),
            ("https://[fd00:ec2::254]/", Blocked::Metadata),
            ("https://100.100.100.200/", Blocked::Metadata),
            ("https://[::ffff:169.254.169.254]/", Blocked::LinkLocal),
            ("https://[::ffff:127.0.0.1]/", Blocked::Loopback),
            ("https://[::127.0.0.1]/", Blocked::Loopback),
            ("https://[64:ff9b::a9fe:a9fe]/", Blocked::LinkLocal),
            ("https://0.0.0.0/", Blocked::Unspecified),
            ("https://[::]/", Blocked::Unspecified),
            ("https://224.0.0.1/", Blocked::Multicast),
            ("https://[ff02::1]/", Blocked::Multicast),
            ("https://255.255.255.255/", Blocked::Broadcast),
            // The URL parser reads these as 127.0.0.1, as connecting would.
            ("https://2130706433/", Blocked::Loopback),
            ("https://0x7f.1/", Blocked::Loopback),
        ] {
            match policy.check_url(url) {
                Err(Refused::Address { kind: got, .. }) => assert_eq!(got, kind, "{url}"),
                other => panic!("{url}: {other:?}"),
            }
        }
        let err = policy.check_url("https://169.254.169.254/").unwrap_err();
        assert_eq!(
            err.to_string(),
            "169.254.169.254 is a link-local address (cloud metadata); \
             webhooks.allowed_networks can allow it"
        );
    }

    #[test]
    fn private_and_public_addresses_are_allowed() {
        let policy = Policy::default();
        for url in [
            "https://10.1.2.3/hook",
            "https://192.168.1.10/hook",
            "https://172.16.0.5/hook",
            "https://8.8.8.8/hook",
            "https://[fd12:3456::1]/hook",
            "https://[2001:db8::1]/hook",
            "https://[::ffff:8.8.8.8]/hook",
        ] {
            assert!(policy.check_url(url).is_ok(), "{url}");
        }
    }

    #[test]
    fn allowed_networks_override_the_defaults() {
        let policy = allowing(&["127.0.0.0/8"]);
        assert!(policy.check_url("http://127.0.0.1:9000/hook").is_ok());
        assert!(policy.check_ip("::ffff:127.0.0.1".parse().unwrap()).is_ok());
        assert!(policy.check_ip("::127.0.0.1".parse().unwrap()).is_ok());
        // Only the listed block.
        assert!(policy.check_ip("::1".parse().unwrap()).is_err());
        assert!(policy.check_ip("169.254.169.254".parse().unwrap()).is_err());
    }

    #[tokio::test]
    async fn the_resolver_refuses_localhost_unless_allowed() {
        let name: Name = "localhost".parse().unwrap();
        let err = GuardedResolver::new(Policy::default()).resolve(name).await.err().unwrap();
        match err.downcast_ref::<Refused>() {
            Some(Refused::Resolves { host, kind, .. }) => {
                assert_eq!(host, "localhost");
                assert_eq!(*kind, Blocked::Loopback);
            }
            other => panic!("{other:?}"),
        }
        assert!(err.to_string().starts_with("the host localhost resolves to "));

        let name: Name = "localhost".parse().unwrap();
        let addrs: Vec<SocketAddr> =
            GuardedResolver::new(allowing(&["127.0.0.0/8"])).resolve(name).await.unwrap().collect();
        assert!(!addrs.is_empty());
        assert!(addrs.iter().all(|a| a.ip().is_loopback() && a.is_ipv4()));
    }

    #[tokio::test]
    async fn the_resolver_reports_names_that_do_not_resolve() {
        let name: Name = "no-such-host.invalid".parse().unwrap();
        let err = GuardedResolver::new(Policy::default()).resolve(name).await.err().unwrap();
        assert_eq!(
            err.downcast_ref::<Refused>(),
            Some(&Refused::Unresolved("no-such-host.invalid".into()))
        );
    }

    async fn redirecting_server() -> SocketAddr {
        use axum::http::{StatusCode, header};
        let app = axum::Router::new()
            .route(
                "/a",
                axum::routing::get(|| async { (StatusCode::FOUND, [(header::LOCATION, "/b")]) }),
            )
            .route("/b", axum::routing::get(|| async { "followed" }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        addr
    }

    #[tokio::test]
    async fn the_client_does_not_follow_redirects() {
        let addr = redirecting_server().await;
        let client = client(allowing(&["127.0.0.0/8"]), Duration::from_secs(10)).unwrap();
        // By name, so the request goes through the guarded resolver.
        let url = format!("http://localhost:{}/a", addr.port());
        let response = client.get(&url).send().await.unwrap();
        assert_eq!(response.status(), reqwest::StatusCode::FOUND);
        assert_eq!(response.headers()[reqwest::header::LOCATION], "/b");
    }

    #[tokio::test]
    async fn the_client_refuses_at_connect_time() {
        let addr = redirecting_server().await;
        let policy = Policy { allow_http: true, ..Policy::default() };
        let client = client(policy, Duration::from_secs(10)).unwrap();
        let url = format!("http://localhost:{}/a", addr.port());
        let err = client.get(&url).send().await.unwrap_err();
        match refusal(&err) {
            Some(Refused::Resolves { kind, .. }) => assert_eq!(*kind, Blocked::Loopback),
            other => panic!("{other:?}: {err:?}"),
        }
    }

    #[tokio::test]
    async fn the_client_is_https_only_by_default() {
        let client = client(Policy::default(), Duration::from_secs(10)).unwrap();
        let err = client.get("http://soar.example.com/").send().await.unwrap_err();
        assert!(refusal(&err).is_none());
        assert!(err.is_builder(), "{err:?}");
    }
}
