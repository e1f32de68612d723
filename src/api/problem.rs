//! Errors as `application/problem+json` (RFC 9457), and the extractors whose rejections must
//! come out in that shape too.
//!
//! Every error answer of the API is a [`Problem`]: the RFC's `type`, `title`, `status` and
//! `detail`, plus our stable `code` (the closed [`ErrorCode`] set callers branch on) and the
//! `request_id` of the request. Handlers return [`ApiError`]; its response carries the problem
//! in the response extensions as well as in the body, and [`render_problems`] (a middleware
//! around the whole router) re-renders it with the request id. The same middleware turns any
//! error answer that did not come from here (axum's 405, a layer's plain-text 413) into a
//! problem, so nothing else ever reaches a caller.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::header::{CONTENT_LENGTH, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use edrgate_adapter::{ErrorCode, ErrorInfo};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// The media type of every error answer.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// An error answer (RFC 9457 problem details with edrgate's stable code).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Problem {
    /// A URI naming the kind of problem: `urn:edrgate:problem:<code>`.
    #[serde(rename = "type")]
    pub kind: String,
    /// A short summary of the kind of problem; the same for every occurrence of a code.
    pub title: String,
    /// The HTTP status code of the answer.
    pub status: u16,
    /// What went wrong this time, for a person.
    pub detail: String,
    /// The stable error code; callers branch on this.
    pub code: ErrorCode,
    /// The request's `X-Request-ID`, to quote when reporting the problem.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// The vendor's raw code, when a vendor spoke.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vendor_code: Option<String>,
    /// The vendor's raw text, when a vendor spoke.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vendor_message: Option<String>,
}

/// An error a handler or extractor answers with. Converts from the engine's [`ErrorInfo`].
/// Boxed: it travels in every handler's `Result`.
#[derive(Debug)]
pub struct ApiError(Box<Inner>);

#[derive(Debug)]
struct Inner {
    status: StatusCode,
    info: ErrorInfo,
    www_authenticate: Option<HeaderValue>,
    retry_after: Option<HeaderValue>,
}

/// `Json<T>` that rejects with a problem (malformed JSON, unknown fields or commands, wrong
/// content type, body over the limit) instead of axum's plain-text answers.
#[derive(Debug, Clone, Copy, Default)]
pub struct Json<T>(pub T);

/// `Query<T>` that rejects with a `400 invalid_request` problem.
#[derive(Debug, Clone, Copy, Default)]
pub struct Query<T>(pub T);

/// `Path<T>` whose rejection is `404 not_found`: every path parameter of the API is an id, and
/// a malformed id names nothing (no `400` that would tell ids apart from unknown ones).
#[derive(Debug, Clone, Copy, Default)]
pub struct Path<T>(pub T);

impl ApiError {
    /// An error with the status that belongs to `code` (see [`status_of`]).
    pub fn new(code: ErrorCode, detail: impl Into<String>) -> ApiError {
        ApiError::from(ErrorInfo::new(code, detail))
    }

    /// An error whose HTTP status differs from the code's usual one (405, 415).
    pub fn with_status(status: StatusCode, code: ErrorCode, detail: impl Into<String>) -> ApiError {
        ApiError(Box::new(Inner {
            status,
            info: ErrorInfo::new(code, detail),
            www_authenticate: None,
            retry_after: None,
        }))
    }

    pub fn invalid(detail: impl Into<String>) -> ApiError {
        ApiError::new(ErrorCode::InvalidRequest, detail)
    }

    pub fn not_found(detail: impl Into<String>) -> ApiError {
        ApiError::new(ErrorCode::NotFound, detail)
    }

    pub fn internal() -> ApiError {
        ApiError::new(ErrorCode::Internal, "internal error")
    }

    /// A `401` for a bearer token that is missing (`invalid_token` false) or bad, with the
    /// `WWW-Authenticate` challenge of RFC 6750 §3. A bad token's `detail` is repeated as the
    /// challenge's `error_description`: it must say why without naming keys or internals.
    pub fn unauthenticated(detail: impl Into<String>, invalid_token: bool) -> ApiError {
        let detail = detail.into();
        let challenge = if invalid_token {
            format!(
                r#"Bearer realm="edrgate", error="invalid_token", error_description="{}""#,
                challenge_text(&detail)
            )
        } else {
            r#"Bearer realm="edrgate""#.to_owned()
        };
        let mut error = ApiError::new(ErrorCode::Unauthenticated, detail);
        error.0.www_authenticate = HeaderValue::from_str(&challenge).ok();
        error
    }

    /// A `403 forbidden` for a caller whose token lacks `scopes` (RFC 6750 §3.1
    /// `insufficient_scope`, naming the scopes that would do).
    pub fn insufficient_scope(detail: impl Into<String>, scopes: &[&str]) -> ApiError {
        let challenge = format!(
            r#"Bearer realm="edrgate", error="insufficient_scope", scope="{}""#,
            challenge_text(&scopes.join(" "))
        );
        let mut error = ApiError::new(ErrorCode::Forbidden, detail);
        error.0.www_authenticate = HeaderValue::from_str(&challenge).ok();
        error
    }

    /// A `429 rate_limited` with `Retry-After` (whole seconds, at least 1).
    pub fn rate_limited(detail: impl Into<String>, retry_after: std::time::Duration) -> ApiError {
        let seconds = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
        let mut error = ApiError::new(ErrorCode::RateLimited, detail);
        error.0.retry_after = Some(HeaderValue::from(seconds.max(1)));
        error
    }

    pub fn status(&self) -> StatusCode {
        self.0.status
    }

    pub fn code(&self) -> ErrorCode {
        self.0.info.code
    }

    /// The problem this error is answered with (without the request id, which the middleware
    /// adds). Internal errors say nothing about their cause.
    pub fn problem(&self) -> Problem {
        let internal = self.0.info.code == ErrorCode::Internal;
        Problem {
            kind: problem_type(self.0.info.code),
            title: title_of(self.0.info.code).to_owned(),
            status: self.0.status.as_u16(),
            detail: if internal {
                "internal error".to_owned()
            } else {
                self.0.info.message.clone()
            },
            code: self.0.info.code,
            request_id: None,
            vendor_code: if internal { None } else { self.0.info.vendor_code.clone() },
            vendor_message: if internal { None } else { self.0.info.vendor_message.clone() },
        }
    }
}

impl From<ErrorInfo> for ApiError {
    fn from(info: ErrorInfo) -> ApiError {
        let www_authenticate = (info.code == ErrorCode::Unauthenticated)
            .then(|| HeaderValue::from_static(r#"Bearer realm="edrgate""#));
        ApiError(Box::new(Inner {
            status: status_of(info.code),
            info,
            www_authenticate,
            retry_after: None,
        }))
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.0.status.as_u16(),
            self.0.info.code.as_str(),
            self.0.info.message
        )
    }
}

impl std::error::Error for ApiError {}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let problem = self.problem();
        let mut response = problem_response(&problem);
        if let Some(challenge) = self.0.www_authenticate {
            response.headers_mut().insert(WWW_AUTHENTICATE, challenge);
        }
        if let Some(after) = self.0.retry_after {
            response.headers_mut().insert(RETRY_AFTER, after);
        }
        // The middleware re-renders the body with the request id from this copy.
        response.extensions_mut().insert(problem);
        response
    }
}

impl<T, S> FromRequest<S> for Json<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        // Content type, size and syntax as axum's `Json` checks them; then the typed value
        // from the document with integral numbers made integers: JSON Schema's `integer` takes
        // `932.0`, serde's `u64` does not.
        let axum::Json(mut document) =
            axum::Json::<serde_json::Value>::from_request(req, state).await?;
        integral_numbers_as_integers(&mut document);
        let bytes = serde_json::to_vec(&document).map_err(|_| ApiError::internal())?;
        Ok(Json(axum::Json::<T>::from_bytes(&bytes)?.0))
    }
}

/// Rewrites every number with no fractional part written as a float (`2.0`, `1e3`) as the
/// integer it is, when it fits one.
fn integral_numbers_as_integers(value: &mut serde_json::Value) {
    use serde_json::Value;
    match value {
        Value::Number(n) if n.is_f64() => {
            let f = n.as_f64().unwrap_or(f64::NAN);
            // 2^64 and -2^63 are exact as f64: the ranges of u64 and i64.
            let integer = if f.fract() != 0.0 {
                None
            } else if (0.0..18_446_744_073_709_551_616.0).contains(&f) {
                Some(serde_json::Number::from(f as u64))
            } else if (-9_223_372_036_854_775_808.0..0.0).contains(&f) {
                Some(serde_json::Number::from(f as i64))
            } else {
                None
            };
            if let Some(integer) = integer {
                *n = integer;
            }
        }
        Value::Array(items) => items.iter_mut().for_each(integral_numbers_as_integers),
        Value::Object(map) => map.values_mut().for_each(integral_numbers_as_integers),
        _ => {}
    }
}

impl<T: Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

impl<T, S> FromRequestParts<S> for Query<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(value)) => Ok(Query(value)),
            Err(rejection) => Err(ApiError::from(rejection)),
        }
    }
}

impl<T, S> FromRequestParts<S> for Path<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(value)) => Ok(Path(value)),
            Err(rejection) => Err(ApiError::from(rejection)),
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> ApiError {
        match rejection {
            JsonRejection::JsonDataError(e) => ApiError::invalid(e.body_text()),
            JsonRejection::JsonSyntaxError(e) => ApiError::invalid(e.body_text()),
            JsonRejection::MissingJsonContentType(e) => ApiError::with_status(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                ErrorCode::InvalidRequest,
                e.body_text(),
            ),
            // Reading the body failed: over `DefaultBodyLimit` (413), or the client went away.
            JsonRejection::BytesRejection(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                ApiError::new(ErrorCode::PayloadTooLarge, "the request body is too large")
            }
            other => ApiError::with_status(
                other.status(),
                code_of_status(other.status()),
                other.body_text(),
            ),
        }
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> ApiError {
        ApiError::invalid(rejection.body_text())
    }
}

impl From<PathRejection> for ApiError {
    fn from(_: PathRejection) -> ApiError {
        ApiError::not_found("no such resource")
    }
}

/// The HTTP status of an error code when the API answers with it.
pub fn status_of(code: ErrorCode) -> StatusCode {
    use ErrorCode::*;
    match code {
        InvalidRequest => StatusCode::BAD_REQUEST,
        PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        Unauthenticated => StatusCode::UNAUTHORIZED,
        Forbidden => StatusCode::FORBIDDEN,
        NotFound => StatusCode::NOT_FOUND,
        Conflict | Cancelled => StatusCode::CONFLICT,
        RateLimited => StatusCode::TOO_MANY_REQUESTS,
        // Well-formed requests the target cannot carry out.
        UnsupportedCommand | DeviceNotFound | DeviceAmbiguous | DeviceOffline | FileNotFound
        | AccessDenied | CommandFailed => StatusCode::UNPROCESSABLE_ENTITY,
        VendorRateLimited | VendorUnavailable => StatusCode::SERVICE_UNAVAILABLE,
        VendorAuthFailed | VendorRejected | OutcomeUnknown => StatusCode::BAD_GATEWAY,
        Timeout => StatusCode::GATEWAY_TIMEOUT,
        Internal => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// The stable code for an error answer that was made by something else than [`ApiError`]
/// (axum's own rejections, tower-http layers).
pub fn code_of_status(status: StatusCode) -> ErrorCode {
    match status {
        StatusCode::UNAUTHORIZED => ErrorCode::Unauthenticated,
        StatusCode::FORBIDDEN => ErrorCode::Forbidden,
        StatusCode::NOT_FOUND => ErrorCode::NotFound,
        StatusCode::CONFLICT => ErrorCode::Conflict,
        StatusCode::TOO_MANY_REQUESTS => ErrorCode::RateLimited,
        StatusCode::PAYLOAD_TOO_LARGE => ErrorCode::PayloadTooLarge,
        StatusCode::REQUEST_TIMEOUT | StatusCode::GATEWAY_TIMEOUT => ErrorCode::Timeout,
        s if s.is_client_error() => ErrorCode::InvalidRequest,
        _ => ErrorCode::Internal,
    }
}

fn title_of(code: ErrorCode) -> &'static str {
    use ErrorCode::*;
    match code {
        InvalidRequest => "Invalid request",
        PayloadTooLarge => "Payload too large",
        Unauthenticated => "Unauthenticated",
        Forbidden => "Forbidden",
        NotFound => "Not found",
        Conflict => "Conflict",
        RateLimited => "Rate limited",
        UnsupportedCommand => "Unsupported command",
        DeviceNotFound => "Device not found",
        DeviceAmbiguous => "Device ambiguous",
        DeviceOffline => "Device offline",
        FileNotFound => "File not found",
        AccessDenied => "Access denied",
        CommandFailed => "Command failed",
        VendorRateLimited => "Vendor rate limited",
        VendorUnavailable => "Vendor unavailable",
        VendorAuthFailed => "Vendor authentication failed",
        VendorRejected => "Vendor rejected the request",
        OutcomeUnknown => "Outcome unknown",
        Timeout => "Timeout",
        Cancelled => "Cancelled",
        Internal => "Internal error",
    }
}

/// Text fit for a quoted `WWW-Authenticate` parameter: visible ASCII without `"` or `\\`.
fn challenge_text(text: &str) -> String {
    text.chars()
        .map(|c| if (c.is_ascii_graphic() || c == ' ') && c != '"' && c != '\\' { c } else { '?' })
        .collect()
}

fn problem_type(code: ErrorCode) -> String {
    format!("urn:edrgate:problem:{}", code.as_str())
}

fn problem_response(problem: &Problem) -> Response {
    let status = StatusCode::from_u16(problem.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    // Serializing a struct of strings and numbers cannot fail; the fallback keeps the
    // content type honest if it ever did.
    let body = serde_json::to_vec(problem).unwrap_or_else(|_| {
        br#"{"type":"urn:edrgate:problem:internal","title":"Internal error","status":500,"detail":"internal error","code":"internal"}"#.to_vec()
    });
    (status, [(CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON))], body).into_response()
}

/// Middleware: gives every problem its request id, and turns every other error answer (empty
/// 405s, plain-text 413s, …) into a problem. Runs inside the request-id layers, so the
/// `X-Request-ID` header is always present on the request by now.
pub async fn render_problems(req: Request, next: Next) -> Response {
    let request_id = req
        .headers()
        .get(crate::api::X_REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let response = next.run(req).await;
    let (mut parts, body) = response.into_parts();
    let problem = match parts.extensions.remove::<Problem>() {
        Some(problem) => problem,
        None => {
            let status = parts.status;
            let is_problem = parts
                .headers
                .get(CONTENT_TYPE)
                .is_some_and(|ct| ct.as_bytes().starts_with(PROBLEM_JSON.as_bytes()));
            if !(status.is_client_error() || status.is_server_error()) || is_problem {
                return Response::from_parts(parts, body);
            }
            let code = code_of_status(status);
            let detail = match status {
                StatusCode::METHOD_NOT_ALLOWED => "method not allowed on this resource".to_owned(),
                s => s.canonical_reason().unwrap_or("error").to_lowercase(),
            };
            ApiError::with_status(status, code, detail).problem()
        }
    };
    let problem = Problem { request_id, ..problem };
    let rendered = problem_response(&problem);
    // Keep the original headers (`Allow`, `WWW-Authenticate`, `Retry-After`, the request id)
    // except those describing the replaced body.
    parts.headers.remove(CONTENT_LENGTH);
    let (new_parts, new_body) = rendered.into_parts();
    parts.headers.extend(new_parts.headers);
    parts.status = new_parts.status;
    Response::from_parts(parts, new_body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_has_the_documented_status() {
        use ErrorCode::*;
        let table = [
            (InvalidRequest, 400),
            (PayloadTooLarge, 413),
            (Unauthenticated, 401),
            (Forbidden, 403),
            (NotFound, 404),
            (Conflict, 409),
            (RateLimited, 429),
            (UnsupportedCommand, 422),
            (DeviceNotFound, 422),
            (DeviceAmbiguous, 422),
            (DeviceOffline, 422),
            (FileNotFound, 422),
            (AccessDenied, 422),
            (CommandFailed, 422),
            (VendorRateLimited, 503),
            (VendorUnavailable, 503),
            (VendorAuthFailed, 502),
            (VendorRejected, 502),
            (OutcomeUnknown, 502),
            (Timeout, 504),
            (Cancelled, 409),
            (Internal, 500),
        ];
        for (code, status) in table {
            assert_eq!(status_of(code).as_u16(), status, "{code:?}");
        }
    }

    #[tokio::test]
    async fn a_problem_is_rfc9457_json_with_our_code() {
        let response = ApiError::from(
            ErrorInfo::new(ErrorCode::VendorRejected, "no").with_vendor("412", "LR disabled"),
        )
        .into_response();
        assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
        assert_eq!(response.headers()[CONTENT_TYPE], PROBLEM_JSON);
        let body = axum::body::to_bytes(response.into_body(), 4096).await.unwrap();
        let value: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            value,
            serde_json::json!({
                "type": "urn:edrgate:problem:vendor_rejected",
                "title": "Vendor rejected the request",
                "status": 502,
                "detail": "no",
                "code": "vendor_rejected",
                "vendor_code": "412",
                "vendor_message": "LR disabled",
            })
        );
    }

    #[test]
    fn internal_errors_hide_their_cause() {
        let problem = ApiError::from(
            ErrorInfo::new(ErrorCode::Internal, "database is locked at /var/lib/x")
                .with_vendor("x", "y"),
        )
        .problem();
        assert_eq!(problem.detail, "internal error");
        assert_eq!(problem.vendor_code, None);
        assert_eq!(problem.status, 500);
    }

    #[test]
    fn unauthenticated_errors_carry_a_bearer_challenge() {
        let response = ApiError::unauthenticated("expired", true).into_response();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        let challenge = response.headers()[WWW_AUTHENTICATE].to_str().unwrap();
        assert_eq!(
            challenge,
            r#"Bearer realm="edrgate", error="invalid_token", error_description="expired""#
        );
        let odd = ApiError::unauthenticated("a \"quoted\" \\ é", true).into_response();
        assert!(odd.headers()[WWW_AUTHENTICATE].to_str().unwrap().contains(r#""a ?quoted? ? ?""#));
        let from_engine =
            ApiError::from(ErrorInfo::new(ErrorCode::Unauthenticated, "no")).into_response();
        assert!(from_engine.headers()[WWW_AUTHENTICATE].to_str().unwrap().starts_with("Bearer"));
    }

    #[test]
    fn forbidden_and_rate_limited_carry_their_headers() {
        let forbidden =
            ApiError::insufficient_scope("no write", &["edrgate:write"]).into_response();
        assert_eq!(forbidden.status(), StatusCode::FORBIDDEN);
        assert_eq!(
            forbidden.headers()[WWW_AUTHENTICATE],
            r#"Bearer realm="edrgate", error="insufficient_scope", scope="edrgate:write""#
        );
        let limited = ApiError::rate_limited("slow down", std::time::Duration::from_millis(1500))
            .into_response();
        assert_eq!(limited.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(limited.headers()[RETRY_AFTER], "2");
        let soon = ApiError::rate_limited("x", std::time::Duration::ZERO).into_response();
        assert_eq!(soon.headers()[RETRY_AFTER], "1");
    }

    #[test]
    fn integral_floats_are_integers() {
        let mut value = serde_json::json!({"pid": 932.0, "n": [1e3, -2.0, 2.5, 1e30], "s": "1.0"});
        integral_numbers_as_integers(&mut value);
        assert_eq!(value, serde_json::json!({"pid": 932, "n": [1000, -2, 2.5, 1e30], "s": "1.0"}));
        assert!(value["pid"].is_u64() && value["n"][1].is_i64());
    }

    #[test]
    fn foreign_error_statuses_get_a_code() {
        assert_eq!(code_of_status(StatusCode::METHOD_NOT_ALLOWED), ErrorCode::InvalidRequest);
        assert_eq!(code_of_status(StatusCode::PAYLOAD_TOO_LARGE), ErrorCode::PayloadTooLarge);
        assert_eq!(code_of_status(StatusCode::BAD_GATEWAY), ErrorCode::Internal);
        assert_eq!(code_of_status(StatusCode::NOT_FOUND), ErrorCode::NotFound);
    }
}
