//! `/v1/files`: metadata (with custody) and streamed content of stored files.

use axum::body::Body;
use axum::extract::State;
use axum::http::header::{CONTENT_DISPOSITION, CONTENT_LENGTH, CONTENT_TYPE, ETAG, IF_NONE_MATCH};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use tokio_util::io::ReaderStream;

use super::ApiState;
use super::problem::{ApiError, Json, Path, Problem};
use crate::auth::{Caller, Permission};
use crate::files::safe_name;
use crate::store::FileMeta;

/// RFC 9530 digest of the whole representation.
pub const REPR_DIGEST: HeaderName = HeaderName::from_static("repr-digest");

/// Metadata of a stored file, including where it came from.
#[utoipa::path(
    get,
    path = "/v1/files/{id}",
    tag = "files",
    params(("id" = String, Path, description = "File id (32 hex digits)")),
    responses(
        (status = 200, description = "The file's metadata and custody", body = FileMeta),
        (status = 401, description = "Missing or invalid bearer token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The `files` permission is missing", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "The tenant's request rate limit is reached (see `Retry-After`)", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such file for this tenant", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn file_meta(
    State(state): State<ApiState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<FileMeta>, ApiError> {
    // Stored files are their own permission (`files`), whatever produced them.
    caller.require(Permission::Files)?;
    let meta = state.engine.files().meta(&caller.tenant, &id).await.map_err(|error| {
        tracing::error!(%error, "file metadata lookup failed");
        ApiError::internal()
    })?;
    meta.map(Json).ok_or_else(no_such_file)
}

/// The content of a stored file, streamed.
///
/// `ETag` is the quoted SHA-256 (hex) and `Repr-Digest` carries it as RFC 9530 asks
/// (`sha-256=:<base64>:`), so a client can check what it received.
#[utoipa::path(
    get,
    path = "/v1/files/{id}/content",
    tag = "files",
    params(
        ("id" = String, Path, description = "File id (32 hex digits)"),
        ("If-None-Match" = Option<String>, Header, description = "An ETag from an earlier download"),
    ),
    responses(
        (status = 200, description = "The file's bytes", content_type = "application/octet-stream", body = Vec<u8>,
            headers(
                ("Content-Length" = u64, description = "Size in bytes"),
                ("ETag" = String, description = "Quoted lower-case hex SHA-256"),
                ("Repr-Digest" = String, description = "`sha-256=:<base64>:` (RFC 9530)"),
                ("Content-Disposition" = String, description = "`attachment; filename=\"...\"`"),
            )),
        (status = 304, description = "Unchanged (If-None-Match matched)"),
        (status = 401, description = "Missing or invalid bearer token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The `files` permission is missing", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "The tenant's request rate limit is reached (see `Retry-After`)", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such file for this tenant", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn file_content(
    State(state): State<ApiState>,
    caller: Caller,
    Path(id): Path<String>,
    request_headers: HeaderMap,
) -> Result<Response, ApiError> {
    caller.require(Permission::Files)?;
    let opened = state.engine.files().open_content(&caller.tenant, &id).await.map_err(|error| {
        tracing::error!(%error, "opening a stored file failed");
        ApiError::internal()
    })?;
    let (meta, file) = opened.ok_or_else(no_such_file)?;
    let etag = format!("\"{}\"", meta.sha256);
    let mut headers = HeaderMap::new();
    headers.insert(ETAG, header(&etag)?);
    if let Ok(digest) = hex::decode(&meta.sha256) {
        let value =
            format!("sha-256=:{}:", base64::engine::general_purpose::STANDARD.encode(digest));
        headers.insert(REPR_DIGEST, header(&value)?);
    }
    if if_none_match(&request_headers, &etag) {
        return Ok((StatusCode::NOT_MODIFIED, headers).into_response());
    }
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    headers.insert(CONTENT_LENGTH, HeaderValue::from(meta.size));
    // `safe_name` keeps only `[A-Za-z0-9._-]`: nothing to escape inside the quotes.
    let disposition = format!("attachment; filename=\"{}\"", safe_name(&meta.name));
    headers.insert(CONTENT_DISPOSITION, header(&disposition)?);
    let body = Body::from_stream(ReaderStream::with_capacity(file, 64 * 1024));
    Ok((headers, body).into_response())
}

fn no_such_file() -> ApiError {
    ApiError::not_found("no such file")
}

fn header(value: &str) -> Result<HeaderValue, ApiError> {
    HeaderValue::from_str(value).map_err(|_| ApiError::internal())
}

/// Whether `If-None-Match` names `etag` (or is `*`).
fn if_none_match(headers: &HeaderMap, etag: &str) -> bool {
    headers.get_all(IF_NONE_MATCH).iter().filter_map(|v| v.to_str().ok()).any(|list| {
        list.split(',').map(str::trim).any(|tag| tag == "*" || tag.trim_start_matches("W/") == etag)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn if_none_match_accepts_lists_weak_tags_and_star() {
        let etag = "\"abc\"";
        let with = |v: &'static str| {
            let mut h = HeaderMap::new();
            h.insert(IF_NONE_MATCH, HeaderValue::from_static(v));
            h
        };
        assert!(if_none_match(&with("\"abc\""), etag));
        assert!(if_none_match(&with("\"x\", W/\"abc\""), etag));
        assert!(if_none_match(&with("*"), etag));
        assert!(!if_none_match(&with("\"abcd\""), etag));
        assert!(!if_none_match(&HeaderMap::new(), etag));
    }
}
