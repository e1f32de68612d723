//! The put-files and scripts libraries (§8.3, §8.4) and CrowdStrike's own scripts.

use super::*;

struct Upload {
    file: Option<(String, Bytes)>,
    fields: Vec<(String, String)>,
}

impl Upload {
    fn field(&self, name: &str) -> Option<&str> {
        self.fields.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

async fn read_upload(mut mp: Multipart, max: u64) -> Result<Upload, ApiError> {
    let mut up = Upload { file: None, fields: Vec::new() };
    while let Some(field) = mp
        .next_field()
        .await
        .map_err(|e| ApiError::bad_request(format!("invalid multipart body: {e}")))?
    {
        let name = field.name().unwrap_or_default().to_owned();
        if name == "file" {
            let filename = field.file_name().unwrap_or_default().to_owned();
            let data = field
                .bytes()
                .await
                .map_err(|e| ApiError::bad_request(format!("invalid multipart body: {e}")))?;
            if data.len() as u64 > max {
                return Err(ApiError::bad_request(format!(
                    "file exceeds the maximum size of {max} bytes"
                )));
            }
            up.file = Some((filename, data));
        } else {
            let text = field
                .text()
                .await
                .map_err(|e| ApiError::bad_request(format!("invalid multipart body: {e}")))?;
            if up.fields.len() < 64 {
                up.fields.push((name.trim_end_matches("[]").to_owned(), text));
            }
        }
    }
    Ok(up)
}

/// `POST` of a put-file or script upload, v1 or v2 (v2 answers the created object).
pub(super) fn upload_route(kind: LibKind, v2: bool) -> MethodRouter<Simulator> {
    post(move |sim: State<Simulator>, ctx: axum::Extension<Ctx>, req: Request| {
        upload(kind, v2, sim, ctx, req)
    })
}

async fn upload(
    kind: LibKind,
    v2: bool,
    State(sim): State<Simulator>,
    axum::Extension(ctx): axum::Extension<Ctx>,
    req: Request,
) -> Answer {
    let client = caller(&ctx)?;
    let bad = |e: ApiError| reject(&ctx, LIBRARY, e);
    let max = sim.config().max_put_file_bytes;
    let content_type =
        req.headers().get(CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default();
    // The swagger says multipart; a script given as `content` alone also comes form-encoded
    // (FalconPy's `create_scripts(data=...)` without `files` makes requests send that).
    let up = if content_type.starts_with("application/x-www-form-urlencoded") {
        let limit = usize::try_from(max).unwrap_or(usize::MAX).saturating_add(1 << 20);
        let body = axum::body::to_bytes(req.into_body(), limit)
            .await
            .map_err(|_| bad(ApiError::bad_request("request body too large")))?;
        let fields = Query::parse(&String::from_utf8_lossy(&body).replace('+', "%20")).0;
        let fields = fields.into_iter().map(|(k, v)| (k.trim_end_matches("[]").to_owned(), v));
        Upload { file: None, fields: fields.take(64).collect() }
    } else {
        let mp = Multipart::from_request(req, &())
            .await
            .map_err(|e| bad(ApiError::bad_request(format!("invalid multipart body: {e}"))))?;
        read_upload(mp, max).await.map_err(bad)?
    };
    let description = up.field("description").unwrap_or_default().to_owned();
    if description.is_empty() {
        return Err(bad(ApiError::bad_request("description is required")));
    }
    let comments = up.field("comments_for_audit_log").unwrap_or_default();
    if comments.len() > 4096 {
        return Err(bad(ApiError::bad_request(
            "comments_for_audit_log must be at most 4096 characters",
        )));
    }
    let (content, file_name) = match (&up.file, up.field("content")) {
        (Some((n, b)), _) => (b.clone(), n.clone()),
        (None, Some(c)) if kind == LibKind::Script => {
            (Bytes::copy_from_slice(c.as_bytes()), String::new())
        }
        _ => {
            return Err(bad(ApiError::bad_request(if kind == LibKind::Script {
                "one of file or content is required"
            } else {
                "file is required"
            })));
        }
    };
    let name = up.field("name").filter(|n| !n.is_empty()).map_or(file_name, str::to_owned);
    if name.is_empty() || name.len() > 32_766 {
        return Err(bad(ApiError::bad_request("name is required (at most 32766 characters)")));
    }
    let (permission, platform) = if kind == LibKind::Script {
        let p = up.field("permission_type").unwrap_or_default().to_owned();
        if !["private", "group", "public"].contains(&p.as_str()) {
            return Err(bad(ApiError::bad_request(
                "permission_type must be one of private, group, public",
            )));
        }
        let mut platform: Vec<String> = up
            .fields
            .iter()
            .filter(|(k, _)| k == "platform")
            .flat_map(|(_, v)| {
                v.split(',').map(|s| s.trim().to_ascii_lowercase()).collect::<Vec<_>>()
            })
            .filter(|s| !s.is_empty())
            .collect();
        if platform.is_empty() {
            platform.push("windows".into());
        }
        if platform.iter().any(|p| !["windows", "linux", "mac"].contains(&p.as_str())) {
            return Err(bad(ApiError::bad_request("platform must be windows, linux or mac")));
        }
        (p, platform)
    } else {
        ("none".to_owned(), Vec::new())
    };
    let created = sim
        .with(|st, _| {
            let id = st.add_library(
                kind,
                &name,
                &description,
                comments,
                &permission,
                platform,
                content,
                client.id,
            )?;
            // An upload through the API is a side effect; the simulator's own seeds are not.
            let op = if kind == LibKind::PutFile { "put_file_upload" } else { "script_upload" };
            st.log.record(op, &name, json!({ "id": id, "created_by": client.id }));
            Ok::<_, ApiError>(
                st.library.iter().find(|f| f.id == id).map(state::State::library_json),
            )
        })
        .map_err(bad)?;
    Ok(written(&ctx, LIBRARY, if v2 { json!([created]) } else { json!([]) }))
}

fn lib_kind(path: &str) -> LibKind {
    if path.contains("/scripts/") { LibKind::Script } else { LibKind::PutFile }
}

pub(super) async fn library_query(
    State(sim): State<Simulator>,
    axum::Extension(ctx): axum::Extension<Ctx>,
    req: Request,
) -> Answer {
    let kind = lib_kind(req.uri().path());
    let q = Query::of(req.uri());
    let offset = q.usize("offset", 0).or_fail(&ctx, RTR)?;
    let limit = q.usize("limit", 100).or_fail(&ctx, RTR)?.clamp(1, 100);
    let filter = q.filter().or_fail(&ctx, RTR)?;
    let (ids, total) = sim.with(|st, _| {
        let all = st
            .library
            .iter()
            .filter(|f| f.kind == kind)
            .filter(|f| {
                filter.matches(|field| match field {
                    "name" => Some(f.name.clone()),
                    "id" => Some(f.id.clone()),
                    "sha256" => {
                        Some(hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&f.content)))
                    }
                    "permission_type" => Some(f.permission_type.clone()),
                    "created_by" => Some(f.created_by.clone()),
                    "platform" => f.platform.first().cloned(),
                    _ => None,
                })
            })
            .map(|f| f.id.clone());
        window(all, offset, limit)
    });
    Ok(page(&ctx, RTR, json!(ids), pagination(offset, limit, total)))
}

pub(super) async fn library_entities(
    State(sim): State<Simulator>,
    axum::Extension(ctx): axum::Extension<Ctx>,
    req: Request,
) -> Answer {
    let kind = lib_kind(req.uri().path());
    let ids = Query::of(req.uri()).all("ids");
    let out = sim.with(|st, _| {
        st.library
            .iter()
            .filter(|f| f.kind == kind)
            // Without ids: the first 100 (XSOAR's listing, PR #35090).
            .filter(|f| ids.is_empty() || ids.contains(&f.id))
            .take(100)
            .map(state::State::library_json)
            .collect::<Vec<_>>()
    });
    Ok(list(&ctx, RTR, out))
}

pub(super) async fn library_delete(
    State(sim): State<Simulator>,
    axum::Extension(ctx): axum::Extension<Ctx>,
    req: Request,
) -> Answer {
    let kind = lib_kind(req.uri().path());
    let ids = Query::of(req.uri()).all("ids");
    if ids.len() != 1 {
        return Err(reject(&ctx, LIBRARY, ApiError::bad_request("exactly one id per call")));
    }
    let removed = sim.with(|st, _| {
        let before = st.library.len();
        st.library.retain(|f| !(f.kind == kind && f.id == ids[0]));
        before != st.library.len()
    });
    if !removed {
        let e = ApiError::new(404, 404, "Could not find file for deletion");
        return Err(reject(&ctx, LIBRARY, e));
    }
    Ok(written(&ctx, LIBRARY, json!([])))
}

pub(super) async fn put_file_contents(
    State(sim): State<Simulator>,
    axum::Extension(ctx): axum::Extension<Ctx>,
    req: Request,
) -> Answer {
    let q = Query::of(req.uri());
    let id = q.get("id").unwrap_or_default();
    let content = sim.with(|st, _| {
        st.library
            .iter()
            .find(|f| f.kind == LibKind::PutFile && f.id == id)
            .map(|f| f.content.clone())
    });
    let content = content.ok_or_else(|| {
        reject(&ctx, RTR, ApiError::new(404, 404, format!("Could not find file with id {id}")))
    })?;
    Ok((StatusCode::OK, [(CONTENT_TYPE, "application/octet-stream")], content).into_response())
}

/// CrowdStrike's own scripts (§8.4): a minimal, fixed catalog.
fn falcon_scripts() -> Vec<Value> {
    [
        (
            "8d0e8a0a2a3d4b1f9f6e1c2b3a4d5e6f",
            "Get-InstalledSoftware",
            "windows",
            "Lists installed software",
        ),
        (
            "1b2c3d4e5f60718293a4b5c6d7e8f901",
            "Get-ScheduledTasks",
            "windows",
            "Lists scheduled tasks",
        ),
        (
            "a1b2c3d4e5f6a7b8c9d0e1f2a3b4c5d6",
            "collect_shell_history",
            "linux",
            "Collects shell history files",
        ),
    ]
    .iter()
    .map(|(id, name, platform, description)| {
        json!({
            "id": id, "name": name, "platform": [platform], "description": description,
            "content": "", "categories": ["Collection"], "access_roles": ["rtr_admin"],
            "is_disruptive": false, "modifies_system": false, "workflow_input_schema": null,
        })
    })
    .collect()
}

pub(super) async fn falcon_scripts_query(axum::Extension(ctx): axum::Extension<Ctx>) -> Response {
    let ids: Vec<Value> = falcon_scripts().iter().map(|s| s["id"].clone()).collect();
    let total = ids.len();
    page(&ctx, RTR, Value::Array(ids), pagination(0, 100, total))
}

pub(super) async fn falcon_scripts_get(
    axum::Extension(ctx): axum::Extension<Ctx>,
    req: Request,
) -> Response {
    let ids = Query::of(req.uri()).all("ids");
    let out: Vec<Value> = falcon_scripts()
        .into_iter()
        .filter(|s| ids.iter().any(|i| s["id"] == i.as_str()))
        .collect();
    list(&ctx, RTR, out)
}
