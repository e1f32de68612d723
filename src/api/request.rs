//! Who is on the other end of a request: its id and the client's address, taking forwarded
//! headers only from configured trusted proxies (a client can write any header it likes);
//! and the checks of a submission's arguments that every vendor needs ([`check_commands`]).

use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, FromRef, FromRequestParts};
use axum::http::HeaderMap;
use axum::http::request::Parts;
use std::sync::Arc;

use edrgate_adapter::Command;

use super::problem::ApiError;
use super::{ApiState, X_REQUEST_ID};

pub use crate::net::Cidr;
use crate::net::canonical;

/// The request's id, the client's address (for the audit trail and logs), and the origin the
/// client addressed (for the links the API answers with).
#[derive(Clone, Debug, Default)]
pub struct RequestMeta {
    pub request_id: Option<String>,
    /// `None` when the transport has no peer address (in-process tests).
    pub client: Option<IpAddr>,
    /// `scheme://host` as the client sees the API: from a trusted proxy's forwarded proto and
    /// host, else `http` and the `Host` header. `None` without a usable host.
    pub origin: Option<String>,
    /// `server.path_prefix`.
    pub prefix: Arc<str>,
}

impl RequestMeta {
    /// The URL of `path` (an API path such as `/v1/actions/…`) as the client can follow it.
    pub fn link(&self, path: &str) -> String {
        format!("{}{}{path}", self.origin.as_deref().unwrap_or(""), self.prefix)
    }
}

impl<S> FromRequestParts<S> for RequestMeta
where
    S: Send + Sync,
    ApiState: FromRef<S>,
{
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let state = ApiState::from_ref(state);
        let request_id =
            parts.headers.get(X_REQUEST_ID).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let peer = parts.extensions.get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip());
        let client = peer.map(|peer| client_address(peer, &parts.headers, &state.trusted_proxies));
        let trusted_peer =
            peer.is_some_and(|p| state.trusted_proxies.iter().any(|c| c.contains(p)));
        let origin = origin(&parts.headers, trusted_peer);
        Ok(RequestMeta { request_id, client, origin, prefix: Arc::clone(&state.prefix) })
    }
}

/// The client's address: the peer, unless the peer is a trusted proxy, in which case the
/// forwarded chain (`Forwarded: for=`, else `X-Forwarded-For`) is walked from the right, past
/// trusted proxies, to the first address no trusted proxy vouches for beyond.
pub fn client_address(peer: IpAddr, headers: &HeaderMap, trusted: &Arc<[Cidr]>) -> IpAddr {
    let is_trusted = |ip: IpAddr| trusted.iter().any(|c| c.contains(ip));
    if !is_trusted(peer) {
        return canonical(peer);
    }
    let chain = forwarded_chain(headers);
    let mut client = canonical(peer);
    for hop in chain.iter().rev() {
        let Some(ip) = *hop else {
            // An unparsable hop (obfuscated `for=_x`, `unknown`): stop at what is known.
            break;
        };
        client = canonical(ip);
        if !is_trusted(ip) {
            break;
        }
    }
    client
}

/// Largest `offset` and `length` of a partial `get_file` (2^53 - 1, the largest integer every
/// JSON client holds exactly): their sum stays far below what vendors and the store take as
/// byte positions (signed 64-bit numbers: JSON numbers, PostgreSQL `bigint`). Declared as
/// the fields' `maximum` in the API document.
pub const MAX_FILE_POSITION: u64 = (1 << 53) - 1;

/// Checks of the commands' arguments that hold for every vendor and that the model leaves
/// open, before the engine's: arguments that do not go together are a `422` (each is valid by
/// the document on its own); a partial `get_file` whose end overflows would wrap (or panic) in each adapter's
/// range arithmetic, so it is refused here, once, before anything is stored.
pub(crate) fn check_commands(commands: &[Command]) -> Result<(), ApiError> {
    for (i, command) in commands.iter().enumerate() {
        if let Err(message) = command.check_combination() {
            return Err(ApiError::with_status(
                axum::http::StatusCode::UNPROCESSABLE_ENTITY,
                edrgate_adapter::ErrorCode::InvalidRequest,
                format!("commands[{i}]: {message}"),
            ));
        }
        if let Command::GetFile { offset, length, .. } = command
            && [offset, length].into_iter().flatten().any(|n| *n > MAX_FILE_POSITION)
        {
            return Err(ApiError::invalid(format!(
                "commands[{i}]: offset and length must not exceed {MAX_FILE_POSITION}"
            )));
        }
    }
    Ok(())
}

/// `scheme://host` of the request as the client made it. Forwarded values count only from a
/// trusted proxy; the first (client-facing) proxy's values win. Hosts are checked to be plain
/// `name[:port]` so a hostile header cannot inject into a `Location`.
fn origin(headers: &HeaderMap, trusted_peer: bool) -> Option<String> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let first = |v: &str| v.split(',').next().unwrap_or("").trim().trim_matches('"').to_owned();
    let (mut proto, mut host) = (None, None);
    if trusted_peer {
        if let Some(forwarded) = header("forwarded") {
            let element = forwarded.split(',').next().unwrap_or("");
            for pair in element.split(';') {
                if let Some((k, v)) = pair.split_once('=') {
                    match k.trim().to_ascii_lowercase().as_str() {
                        "proto" => proto = Some(first(v)),
                        "host" => host = Some(first(v)),
                        _ => {}
                    }
                }
            }
        }
        proto = proto.or_else(|| header("x-forwarded-proto").map(first));
        host = host.or_else(|| header("x-forwarded-host").map(first));
    }
    let proto = proto.filter(|p| p == "http" || p == "https").unwrap_or_else(|| "http".into());
    let host = host.or_else(|| header("host").map(str::to_owned))?;
    let plain = !host.is_empty()
        && host.len() <= 255
        && host.bytes().all(|b| b.is_ascii_alphanumeric() || b"-.:[]".contains(&b));
    plain.then(|| format!("{proto}://{host}"))
}

/// The forwarded-for chain, leftmost (original client) first. `None` for a hop that is not
/// an address.
fn forwarded_chain(headers: &HeaderMap) -> Vec<Option<IpAddr>> {
    let forwarded: Vec<&str> =
        headers.get_all("forwarded").iter().filter_map(|v| v.to_str().ok()).collect();
    if !forwarded.is_empty() {
        // RFC 7239: `for=192.0.2.1;proto=https, for="[2001:db8::1]:4711"`.
        return forwarded
            .iter()
            .flat_map(|v| v.split(','))
            .filter_map(|element| {
                element.split(';').find_map(|pair| {
                    let (k, v) = pair.split_once('=')?;
                    k.trim().eq_ignore_ascii_case("for").then(|| parse_node(v.trim()))
                })
            })
            .collect();
    }
    headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|hop| parse_node(hop.trim()))
        .collect()
}

/// `192.0.2.1`, `192.0.2.1:80`, `"[2001:db8::1]:4711"`, `2001:db8::1`.
fn parse_node(node: &str) -> Option<IpAddr> {
    let node = node.trim_matches('"');
    if let Ok(ip) = node.parse() {
        return Some(ip);
    }
    if let Ok(addr) = node.parse::<SocketAddr>() {
        return Some(addr.ip());
    }
    node.strip_prefix('[')?.split_once(']')?.0.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn trusted(list: &[&str]) -> Arc<[Cidr]> {
        list.iter().map(|c| Cidr::parse(c).unwrap()).collect()
    }

    #[test]
    fn origin_comes_from_trusted_proxies_only() {
        let mut h = HeaderMap::new();
        h.insert("host", HeaderValue::from_static("gw.internal:8080"));
        h.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        h.insert("x-forwarded-host", HeaderValue::from_static("soc.example.com"));
        assert_eq!(origin(&h, true).as_deref(), Some("https://soc.example.com"));
        assert_eq!(origin(&h, false).as_deref(), Some("http://gw.internal:8080"));
        h.insert(
            "forwarded",
            HeaderValue::from_static("for=1.2.3.4;proto=http;host=\"a.example:81\""),
        );
        assert_eq!(origin(&h, true).as_deref(), Some("http://a.example:81"));
        h.insert("x-forwarded-host", HeaderValue::from_static("evil.example/x"));
        h.remove("forwarded");
        assert_eq!(origin(&h, true), None);
    }

    #[test]
    fn forwarded_headers_count_only_from_trusted_peers() {
        let proxies = trusted(&["127.0.0.1/32", "10.0.0.0/8"]);
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("6.6.6.6, 203.0.113.7, 10.1.2.3"));
        let cases = [
            // An untrusted peer's headers are ignored.
            ("198.51.100.1", "198.51.100.1"),
            // From a trusted proxy: walk past trusted hops to the first untrusted one; the
            // spoofed leftmost entry is never reached.
            ("127.0.0.1", "203.0.113.7"),
        ];
        for (peer, expected) in cases {
            let got = client_address(peer.parse().unwrap(), &h, &proxies);
            assert_eq!(got.to_string(), expected, "peer {peer}");
        }
        let mut f = HeaderMap::new();
        f.insert(
            "forwarded",
            HeaderValue::from_static("for=192.0.2.60;proto=https, for=\"[2001:db8::1]:4711\""),
        );
        let got = client_address("127.0.0.1".parse().unwrap(), &f, &proxies);
        assert_eq!(got.to_string(), "2001:db8::1");
        let mut u = HeaderMap::new();
        u.insert("x-forwarded-for", HeaderValue::from_static("unknown"));
        let got = client_address("127.0.0.1".parse().unwrap(), &u, &proxies);
        assert_eq!(got.to_string(), "127.0.0.1");
    }
}
