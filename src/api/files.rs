//! `/v1/files`: uploads, metadata (with custody), streamed content (ranges, zip) and deletion.
//!
//! Every byte path streams: an upload goes to storage chunk by chunk under the tenant's size
//! cap (`files.max_upload_bytes`), a download comes from storage chunk by chunk, checked
//! against the recorded digest ([`crate::files::Verified`]).

use std::ops::Range;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::header::{
    ACCEPT_RANGES, CACHE_CONTROL, CONNECTION, CONTENT_DISPOSITION, CONTENT_LENGTH, CONTENT_RANGE,
    CONTENT_TYPE, ETAG, IF_NONE_MATCH, IF_RANGE, LOCATION, RANGE,
};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use bytes::Bytes;
use edrgate_adapter::ErrorCode;
use futures::{Stream, StreamExt};
use secrecy::SecretString;
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};

use super::audit;
use super::problem::{ApiError, Json, Path, Problem, Query};
use super::request::RequestMeta;
use super::{ApiState, X_REQUEST_ID};
use crate::audit::{AuditEvent, AuditRecord};
use crate::auth::{Caller, Permission};
use crate::files::{FileError, FileStore, StoredWriter, archive, check_upload_name, safe_name};
use crate::store::{FileMeta, FileOrigin, FileSource};

/// RFC 9530 digest of the whole representation.
pub const REPR_DIGEST: HeaderName = HeaderName::from_static("repr-digest");
/// Longest zip password accepted.
const MAX_PASSWORD: usize = 128;
/// The zip's password when `archive=zip` comes without one: the convention of malware-sharing
/// archives.
const DEFAULT_ZIP_PASSWORD: &str = "infected";

/// Query of `POST /v1/files`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct UploadQuery {
    /// The file's name (one path component; no `/`, `\`, `..` or control characters). With
    /// multipart, defaults to the part's file name.
    #[param(
        min_length = 1,
        max_length = 255,
        pattern = r"^(?!\.\.?$)[^/\\\u0000-\u001f\u007f-\u009f]+$",
        example = "collector.ps1"
    )]
    name: Option<String>,
}

/// Raw bytes (a request or response body that is not JSON).
#[derive(ToSchema)]
#[schema(value_type = String, format = Binary)]
pub(crate) struct Binary(#[allow(dead_code)] Vec<u8>);

/// `multipart/form-data` upload: the first part with a file name (or named `file`).
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) struct UploadForm {
    #[schema(value_type = String, format = Binary)]
    file: Vec<u8>,
}

/// Upload file
///
/// A tool or script for `put_file` / `run_script`, streamed to storage. The body is the raw content (any content type but multipart), or `multipart/form-data`
/// with one file part. The size and SHA-256 are computed on the way; past the tenant's size
/// cap the upload is refused with `413 payload_too_large` and nothing is kept.
#[utoipa::path(
    post,
    path = "/v1/files",
    tag = "files",
    operation_id = "UploadFile",
    params(UploadQuery),
    request_body(content(
        (Binary = "application/octet-stream"),
        (UploadForm = "multipart/form-data"),
    )),
    responses(
        (status = 201, description = "Stored; `Location` names it", body = FileMeta,
            headers(("Location" = String, description = "`/v1/files/{id}`"))),
        (status = 400, description = "Bad name, bad multipart body, or the upload was interrupted", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid bearer token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The `files` permission is missing", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "The tenant's request rate limit is reached (see `Retry-After`)", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Larger than the tenant's `max_upload_bytes`", body = Problem, content_type = "application/problem+json"),
    ),
    security(("BearerAuth" = []))
)]
pub(crate) async fn upload_file(
    State(state): State<ApiState>,
    caller: Caller,
    meta: RequestMeta,
    Query(query): Query<UploadQuery>,
    request: Request,
) -> Result<Response, ApiError> {
    let file = match upload_audited(&state, &caller, &meta, query.name, request).await {
        Ok(file) => file,
        Err(error) => {
            // The body may be partly unread: the client must not send its next request on
            // this connection (hyper closes it after the answer).
            let mut response = error.into_response();
            response.headers_mut().insert(CONNECTION, HeaderValue::from_static("close"));
            return Ok(response);
        }
    };
    let location = header(&meta.link(&format!("/v1/files/{}", file.id)))?;
    Ok((StatusCode::CREATED, [(LOCATION, location)], Json(file)).into_response())
}

/// The upload of `POST /v1/files` (raw body or multipart; caps, streaming, custody, audit),
/// for every door that takes files (the Carbon Black front door's session files too). On an
/// error the body may be partly unread: the caller's answer should close the connection.
pub(crate) async fn upload_audited(
    state: &ApiState,
    caller: &Caller,
    meta: &RequestMeta,
    name: Option<String>,
    request: Request,
) -> Result<FileMeta, ApiError> {
    let stored = upload(state, caller, UploadQuery { name }, request).await;
    let entry = match &stored {
        Ok(file) => {
            let mut entry = AuditRecord::new(AuditEvent::FileUpload, "ok", 201);
            entry.file_id = Some(file.id.clone());
            entry.detail = Some(serde_json::json!({
                "name": file.name, "size": file.size, "sha256": file.sha256,
            }));
            entry
        }
        Err(error) => audit::refused(AuditEvent::FileUpload, error),
    };
    audit::record(state, caller, meta, entry).await;
    stored
}

async fn upload(
    state: &ApiState,
    caller: &Caller,
    query: UploadQuery,
    request: Request,
) -> Result<FileMeta, ApiError> {
    // Stored files are their own permission (`files`), whatever produced them.
    caller.require(Permission::Files)?;
    let files = state.engine.files();
    let limit = files.policy(&caller.tenant).max_upload_bytes;
    let headers = request.headers().clone();
    let announced = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if announced.is_some_and(|n| n > limit) {
        linger(request.into_body()).await;
        return Err(too_large(limit));
    }
    let origin = |name: &str| FileOrigin {
        source: FileSource::Upload,
        subject: caller.subject.clone(),
        original_name: Some(name.to_owned()),
        request_id: headers.get(&X_REQUEST_ID).and_then(|v| v.to_str().ok()).map(str::to_owned),
        ..FileOrigin::default()
    };
    let body = request.into_body().into_data_stream();
    let content_type = headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let meta = if content_type.to_ascii_lowercase().starts_with("multipart/form-data") {
        let boundary = multer::parse_boundary(content_type)
            .map_err(|_| ApiError::invalid("multipart/form-data needs a boundary"))?;
        // The parser buffers a preamble and each part's headers whole: capped on the way in.
        let body = super::multipart::guard(body, &boundary);
        let mut multipart = multer::Multipart::new(body, boundary);
        loop {
            let field = multipart.next_field().await.map_err(|e| multipart_error(&e))?;
            let Some(field) = field else {
                return Err(ApiError::invalid("the multipart body has no file part"));
            };
            if field.file_name().is_none() && field.name() != Some("file") {
                // Other parts are skipped, but their names must be what the document allows.
                check_part_name(field.name())?;
                continue;
            }
            let name = query.name.clone().or_else(|| field.file_name().map(str::to_owned));
            let name = upload_name(name)?;
            let writer = create(files, &caller.tenant, &name, origin(&name), limit).await?;
            let field = field.map(|chunk| chunk.map_err(|e| multipart_error(&e)));
            let meta = store(writer, field).await?;
            // The parts after the file are checked the same way; a bad one drops the file.
            let rest = async {
                while let Some(part) =
                    multipart.next_field().await.map_err(|e| multipart_error(&e))?
                {
                    check_part_name(part.name())?;
                }
                Ok::<(), ApiError>(())
            };
            if let Err(error) = rest.await {
                if let Err(e) = files.delete(&caller.tenant, &meta.id).await {
                    tracing::warn!(error = %e, file_id = %meta.id, "could not drop a refused upload");
                }
                return Err(error);
            }
            break meta;
        }
    } else {
        let name = upload_name(query.name.clone())?;
        let writer = create(files, &caller.tenant, &name, origin(&name), limit).await?;
        let body = body.map(|chunk| {
            chunk.map_err(|_| ApiError::invalid("the upload was interrupted before its end"))
        });
        store(writer, body).await?
    };
    Ok(meta)
}

/// The name of a multipart part that is not the file: present (RFC 7578), without a quote,
/// backslash or control character (the document's `propertyNames`).
fn check_part_name(name: Option<&str>) -> Result<(), ApiError> {
    let usable = name.is_some_and(|name| {
        !name.contains(['"', '\\']) && !name.chars().any(|c| c.is_ascii_control())
    });
    if usable {
        return Ok(());
    }
    Err(ApiError::invalid(
        "a multipart part has no name, or one with a quote, backslash or control character",
    ))
}

fn upload_name(name: Option<String>) -> Result<String, ApiError> {
    let name = name.unwrap_or_else(|| "upload.bin".to_owned());
    check_upload_name(&name).map_err(|m| ApiError::invalid(format!("name: {m}")))?;
    Ok(name)
}

async fn create(
    files: &FileStore,
    tenant: &str,
    name: &str,
    origin: FileOrigin,
    limit: u64,
) -> Result<StoredWriter, ApiError> {
    files.create(tenant, name, origin, Some(limit)).await.map_err(file_error)
}

/// Streams `body` into `writer`. Any error drops the writer, which discards what was written.
async fn store(
    mut writer: StoredWriter,
    body: impl Stream<Item = Result<Bytes, ApiError>>,
) -> Result<FileMeta, ApiError> {
    futures::pin_mut!(body);
    while let Some(chunk) = body.next().await {
        writer.write_bytes(chunk?).await.map_err(file_error)?;
    }
    writer.finish().await.map_err(file_error)
}

fn multipart_error(e: &multer::Error) -> ApiError {
    use super::multipart::GuardError;
    match e {
        multer::Error::StreamReadFailed(source) => match source.downcast_ref::<GuardError>() {
            Some(GuardError::Overlong(overlong)) => ApiError::invalid(overlong.to_string()),
            _ => ApiError::invalid("the upload was interrupted before its end"),
        },
        e => ApiError::invalid(format!("bad multipart body: {e}")),
    }
}

/// Reads and drops what the client is still sending of a body refused before it was read,
/// for a bounded while, before the answer and the close (RFC 9112 §9.6; nginx's lingering
/// close): a client still writing when the connection closes gets a broken pipe instead of
/// the `413`. Bounded (16 MiB, 2 s) so that a huge or slow body costs little.
async fn linger(body: Body) {
    let mut left: usize = 16 * 1024 * 1024;
    let mut stream = body.into_data_stream();
    let drain = async {
        while let Some(Ok(chunk)) = stream.next().await {
            left = left.saturating_sub(chunk.len());
            if left == 0 {
                return;
            }
        }
    };
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), drain).await;
}

fn too_large(limit: u64) -> ApiError {
    ApiError::new(
        ErrorCode::PayloadTooLarge,
        format!("the upload is larger than this tenant's limit of {limit} bytes"),
    )
}

fn file_error(e: FileError) -> ApiError {
    match e {
        FileError::TooLarge { limit } => too_large(limit),
        FileError::NotFound => no_such_file(),
        error => {
            tracing::error!(%error, "file store failure");
            ApiError::internal()
        }
    }
}

/// Get file metadata
///
/// Metadata of a stored file, including where it came from.
#[utoipa::path(
    get,
    path = "/v1/files/{id}",
    tag = "files",
    operation_id = "GetFileMeta",
    params(("id" = String, Path, description = "File id (32 hex digits)")),
    responses(
        (status = 200, description = "The file's metadata and custody", body = FileMeta),
        (status = 401, description = "Missing or invalid bearer token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The `files` permission is missing", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "The tenant's request rate limit is reached (see `Retry-After`)", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such file for this tenant", body = Problem, content_type = "application/problem+json"),
    ),
    security(("BearerAuth" = []))
)]
pub(crate) async fn file_meta(
    State(state): State<ApiState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<FileMeta>, ApiError> {
    caller.require(Permission::Files)?;
    let meta = state.engine.files().meta(&caller.tenant, &id).await.map_err(|error| {
        tracing::error!(%error, "file metadata lookup failed");
        ApiError::internal()
    })?;
    meta.map(Json).ok_or_else(no_such_file)
}

/// Delete file
///
/// The stored file disappears at once, its content right after.
#[utoipa::path(
    delete,
    path = "/v1/files/{id}",
    tag = "files",
    operation_id = "DeleteFile",
    params(("id" = String, Path, description = "File id (32 hex digits)")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, description = "Missing or invalid bearer token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The `files` permission is missing", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "The tenant's request rate limit is reached (see `Retry-After`)", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such file for this tenant", body = Problem, content_type = "application/problem+json"),
    ),
    security(("BearerAuth" = []))
)]
pub(crate) async fn delete_file(
    State(state): State<ApiState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    caller.require(Permission::Files)?;
    match state.engine.files().delete(&caller.tenant, &id).await {
        Ok(true) => Ok(StatusCode::NO_CONTENT),
        Ok(false) => Err(no_such_file()),
        Err(e) => Err(file_error(e)),
    }
}

/// Query of `GET /v1/files/{id}/content`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct ContentQuery {
    /// `zip`: the file packed in an AES-256 zip protected by `password`.
    archive: Option<ArchiveKind>,
    /// The zip's password (default `infected`); given alone, it implies `archive=zip`.
    #[param(min_length = 1, max_length = 128, example = "infected")]
    password: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub(crate) enum ArchiveKind {
    Zip,
}

/// Download file
///
/// The content of a stored file, streamed. `ETag` is the quoted SHA-256 (hex) and `Repr-Digest` carries it as RFC 9530 asks
/// (`sha-256=:<base64>:`), so a client can check what it received; with a `Range`, both still
/// describe the whole file. A whole download is checked against the recorded digest as it
/// streams and is cut short (never completed) if the stored content no longer matches; a
/// range is served after checking the stored size only. One `Range` (`bytes=a-b`, `a-`, `-n`)
/// is honoured; several are answered with the whole file. `?archive=zip&password=…` packs the
/// file into an AES-256 zip (no `Range`, no `Content-Length`).
#[utoipa::path(
    get,
    path = "/v1/files/{id}/content",
    tag = "files",
    operation_id = "DownloadFile",
    params(
        ("id" = String, Path, description = "File id (32 hex digits)"),
        ContentQuery,
        ("If-None-Match" = Option<String>, Header, description = "An ETag from an earlier download"),
        ("Range" = Option<String>, Header, description = "One byte range, e.g. `bytes=0-1048575`"),
        ("If-Range" = Option<String>, Header, description = "Serve the range only if the ETag still matches"),
    ),
    responses(
        (status = 200, description = "The file's bytes (`application/octet-stream`), or with `archive`/`password` the zip (`application/zip`)", content(
            (Binary = "application/octet-stream"),
            (Binary = "application/zip"),
        ),
            headers(
                ("Content-Length" = u64, description = "Size in bytes (not with `archive`)"),
                ("ETag" = String, description = "Quoted lower-case hex SHA-256"),
                ("Repr-Digest" = String, description = "`sha-256=:<base64>:` (RFC 9530)"),
                ("Content-Disposition" = String, description = "`attachment; filename=\"...\"`"),
            )),
        (status = 206, description = "One range of the file", content_type = "application/octet-stream", body = Binary,
            headers(
                ("Content-Range" = String, description = "`bytes a-b/size`"),
                ("Content-Length" = u64, description = "Length of the range"),
            )),
        (status = 304, description = "Unchanged (If-None-Match matched)"),
        (status = 400, description = "Bad `archive` or password", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid bearer token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The `files` permission is missing", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "The tenant's request rate limit is reached (see `Retry-After`)", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such file for this tenant", body = Problem, content_type = "application/problem+json"),
        (status = 416, description = "The range lies outside the file", body = Problem, content_type = "application/problem+json"),
    ),
    security(("BearerAuth" = []))
)]
pub(crate) async fn file_content(
    State(state): State<ApiState>,
    caller: Caller,
    meta: RequestMeta,
    Path(id): Path<String>,
    Query(query): Query<ContentQuery>,
    request_headers: HeaderMap,
) -> Result<Response, ApiError> {
    content_audited(&state, &caller, &meta, id, query, &request_headers).await
}

/// The raw content of a stored file as `GET /v1/files/{id}/content` streams it (ranges,
/// digests, audit), for the Carbon Black front door's `…/file/{fid}/content` too.
pub(crate) async fn file_content_for(
    state: &ApiState,
    caller: &Caller,
    meta: &RequestMeta,
    id: String,
    request_headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let query = ContentQuery { archive: None, password: None };
    content_audited(state, caller, meta, id, query, request_headers).await
}

async fn content_audited(
    state: &ApiState,
    caller: &Caller,
    meta: &RequestMeta,
    id: String,
    query: ContentQuery,
    request_headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let detail = serde_json::json!({
        "range": request_headers.get(RANGE).and_then(|v| v.to_str().ok()),
        "archive": query.archive.as_ref().map(|_| "zip"),
    });
    let answered = content(state, caller, &id, query, request_headers).await;
    // The body streams after this: a transfer cut short (or a digest found wrong on the way)
    // shows in the logs, not here.
    let mut entry = match &answered {
        Ok(response) => {
            AuditRecord::new(AuditEvent::FileDownload, "ok", response.status().as_u16())
        }
        Err(error) => audit::refused(AuditEvent::FileDownload, error),
    };
    entry.file_id = Some(id);
    entry.detail = Some(detail);
    audit::record(state, caller, meta, entry).await;
    answered
}

async fn content(
    state: &ApiState,
    caller: &Caller,
    id: &str,
    query: ContentQuery,
    request_headers: &HeaderMap,
) -> Result<Response, ApiError> {
    caller.require(Permission::Files)?;
    let files = state.engine.files();
    let meta = files.meta(&caller.tenant, id).await.map_err(|error| {
        tracing::error!(%error, "file metadata lookup failed");
        ApiError::internal()
    })?;
    let meta = meta.ok_or_else(no_such_file)?;
    let password = match (query.archive, query.password) {
        (Some(ArchiveKind::Zip), None) => Some(DEFAULT_ZIP_PASSWORD.to_owned().into()),
        (_, Some(password)) => Some(zip_password(password)?),
        (None, None) => None,
    };
    let etag = format!("\"{}\"", meta.sha256);
    let mut headers = HeaderMap::new();
    if let Some(password) = password {
        let (_, content) = files.open(&caller.tenant, id, None).await.map_err(file_error)?;
        let name = safe_name(&meta.name);
        let zip = archive::zip_stream(content, name.clone(), meta.size, password);
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/zip"));
        headers.insert(CONTENT_DISPOSITION, disposition(&format!("{name}.zip"))?);
        // Each archive has its own salt: there is nothing stable to validate against.
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        return Ok((headers, Body::from_stream(zip)).into_response());
    }
    headers.insert(ETAG, header(&etag)?);
    if let Ok(digest) = hex::decode(&meta.sha256) {
        let value =
            format!("sha-256=:{}:", base64::engine::general_purpose::STANDARD.encode(digest));
        headers.insert(REPR_DIGEST, header(&value)?);
    }
    if if_none_match(request_headers, &etag) {
        return Ok((StatusCode::NOT_MODIFIED, headers).into_response());
    }
    headers.insert(ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    headers.insert(CONTENT_DISPOSITION, disposition(&safe_name(&meta.name))?);
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    let if_range_ok =
        request_headers.get(IF_RANGE).is_none_or(|v| v.to_str().is_ok_and(|v| v.trim() == etag));
    let range = match request_headers.get(RANGE).and_then(|v| v.to_str().ok()) {
        Some(spec) if if_range_ok => match parse_range(spec, meta.size) {
            RangeSpec::Whole => None,
            RangeSpec::Part(r) => Some(r),
            RangeSpec::Unsatisfiable => {
                let mut response = ApiError::with_status(
                    StatusCode::RANGE_NOT_SATISFIABLE,
                    ErrorCode::InvalidRequest,
                    format!("the range lies outside the file's {} bytes", meta.size),
                )
                .into_response();
                response
                    .headers_mut()
                    .insert(CONTENT_RANGE, header(&format!("bytes */{}", meta.size))?);
                return Ok(response);
            }
        },
        _ => None,
    };
    let (_, content) = files.open(&caller.tenant, id, range.clone()).await.map_err(file_error)?;
    let status = match &range {
        Some(r) => {
            let value = format!("bytes {}-{}/{}", r.start, r.end - 1, meta.size);
            headers.insert(CONTENT_RANGE, header(&value)?);
            headers.insert(CONTENT_LENGTH, HeaderValue::from(r.end - r.start));
            StatusCode::PARTIAL_CONTENT
        }
        None => {
            headers.insert(CONTENT_LENGTH, HeaderValue::from(meta.size));
            StatusCode::OK
        }
    };
    Ok((status, headers, Body::from_stream(content)).into_response())
}

fn zip_password(password: String) -> Result<SecretString, ApiError> {
    if password.is_empty() || password.chars().count() > MAX_PASSWORD {
        return Err(ApiError::invalid(format!("password: 1 to {MAX_PASSWORD} characters")));
    }
    Ok(password.into())
}

/// `safe_name` keeps only `[A-Za-z0-9._-]`: nothing to escape inside the quotes.
fn disposition(name: &str) -> Result<HeaderValue, ApiError> {
    header(&format!("attachment; filename=\"{name}\""))
}

/// What a `Range` header asks of a file of `size` bytes (RFC 9110 §14.1.2).
#[derive(Debug, PartialEq, Eq)]
enum RangeSpec {
    /// No usable single range (unparsable, several, or covering everything): the whole file.
    Whole,
    Part(Range<u64>),
    Unsatisfiable,
}

fn parse_range(spec: &str, size: u64) -> RangeSpec {
    let Some(set) = spec.trim().strip_prefix("bytes=") else {
        return RangeSpec::Whole;
    };
    if set.contains(',') {
        return RangeSpec::Whole;
    }
    let Some((first, last)) = set.trim().split_once('-') else {
        return RangeSpec::Whole;
    };
    let number = |s: &str| {
        let s = s.trim();
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            None
        } else {
            s.parse::<u64>().ok()
        }
    };
    let range = match (number(first), number(last)) {
        // `-n`: the last n bytes.
        (None, Some(n)) if first.trim().is_empty() => {
            if n == 0 || size == 0 {
                return RangeSpec::Unsatisfiable;
            }
            size.saturating_sub(n)..size
        }
        (Some(a), None) if last.trim().is_empty() => a..size,
        (Some(a), Some(b)) if a <= b => a..size.min(b.saturating_add(1)),
        _ => return RangeSpec::Whole,
    };
    if range.start >= size {
        RangeSpec::Unsatisfiable
    } else if range == (0..size) {
        RangeSpec::Whole
    } else {
        RangeSpec::Part(range)
    }
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

    #[test]
    fn ranges_follow_rfc_9110() {
        use RangeSpec::*;
        let table = [
            ("bytes=0-99", 1000, Part(0..100)),
            ("bytes=900-", 1000, Part(900..1000)),
            ("bytes=-100", 1000, Part(900..1000)),
            ("bytes=-5000", 1000, Whole),
            ("bytes=990-5000", 1000, Part(990..1000)),
            ("bytes=0-999", 1000, Whole),
            ("bytes=1000-", 1000, Unsatisfiable),
            ("bytes=-0", 1000, Unsatisfiable),
            ("bytes=0-0", 0, Unsatisfiable),
            ("bytes=5-1", 1000, Whole),
            ("bytes=0-1,5-6", 1000, Whole),
            ("items=0-1", 1000, Whole),
            ("bytes=a-b", 1000, Whole),
            ("bytes=+1-2", 1000, Whole),
        ];
        for (spec, size, expected) in table {
            assert_eq!(parse_range(spec, size), expected, "{spec} of {size}");
        }
    }
}
