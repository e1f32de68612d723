//! Batch RTR (§7): init, refresh, the three batch command tiers and batch get.

use super::*;

#[derive(Deserialize, Default)]
struct BatchInitBody {
    #[serde(default)]
    host_ids: Vec<String>,
    #[serde(default)]
    queue_offline: bool,
    #[serde(default)]
    existing_batch_id: String,
    /// PSFalcon's keep-alive re-POSTs `{"batch_id": …}` here (§5.4).
    #[serde(default)]
    batch_id: String,
}

pub(super) async fn batch_init(
    State(sim): State<Simulator>,
    axum::Extension(ctx): axum::Extension<Ctx>,
    req: Request,
) -> Answer {
    let (client, ..) = timed(&ctx, &req)?;
    let mut b: BatchInitBody = json_body(req).await.or_fail(&ctx, RTR)?;
    if b.host_ids.is_empty() && !b.batch_id.is_empty() {
        // A batch's hosts initialised again: their live sessions are refreshed and returned.
        let hosts = sim.with(|st, _| {
            let batch = st.batches.get(&b.batch_id).filter(|x| x.client == client.id)?;
            Some(batch.hosts.keys().map(|h| st.hosts[*h].aid.clone()).collect::<Vec<_>>())
        });
        if let Some(hosts) = hosts {
            b.host_ids = hosts;
            b.existing_batch_id = std::mem::take(&mut b.batch_id);
        }
    }
    let limit = sim.config().batch_host_limit;
    let n = b.host_ids.len();
    if n == 0 || n > limit {
        // KBN-EMU's body: an empty batch id and an empty resources map.
        let message = format!(
            "Invalid number of hosts in request: {n}. Must be an integer greater than 0 and less than or equal to {limit}"
        );
        let body = json!({
            "meta": meta(&ctx, RTR), "batch_id": "", "resources": {},
            "errors": [{ "code": 400, "message": message }],
        });
        return Err(reply(400, &body).into());
    }
    let (batch_id, map) = sim
        .with(|st, now| {
            let batch_id = if b.existing_batch_id.is_empty() {
                st.new_batch(client.id)
            } else if st.batches.get(&b.existing_batch_id).is_some_and(|x| x.client == client.id) {
                b.existing_batch_id.clone()
            } else {
                return Err(ApiError::no_session());
            };
            let mut map = serde_json::Map::new();
            let mut any = false;
            for id in &b.host_ids {
                // As KBN-EMU records them: a failed host has no task id nor base command.
                let mut v = json!({
                    "aid": id, "session_id": "", "complete": false, "stdout": "", "stderr": "",
                    "errors": [], "offline_queued": false, "query_time": 0.0,
                });
                let host = if state::is_aid(id) { st.host_by_aid(id) } else { None };
                let result = match host {
                    // KBN-EMU's per-host error for a malformed id (§7.2).
                    None if !state::is_aid(id) => {
                        let message =
                            format!("uuid: incorrect UUID length {} in string {id}", id.len());
                        Err(ApiError::new(500, 500, message))
                    }
                    // An unknown aid has no sensor to reach ([U]).
                    None => Err(ApiError::offline()),
                    Some(h) => {
                        st.init_session(client.id, h, b.queue_offline, "", now).map(|sid| (h, sid))
                    }
                };
                match result {
                    Err(e) => v["errors"] = json!([e.to_json()]),
                    Ok((h, sid)) => {
                        any = true;
                        let online = st.hosts[h].online;
                        if let Some(batch) = st.batches.get_mut(&batch_id) {
                            batch.hosts.insert(h, sid.clone());
                        }
                        v["session_id"] = json!(sid);
                        v["task_id"] = json!(state::uuid());
                        v["base_command"] = json!("");
                        v["offline_queued"] = json!(!online);
                        if online {
                            // The cloud's `pwd` on connect (§7.2).
                            v["complete"] = json!(true);
                            v["base_command"] = json!("pwd");
                            v["stdout"] = json!(st.hosts[h].endpoint.os.root());
                        }
                    }
                }
                map.insert(id.clone(), v);
            }
            st.counters.batch_inits += 1;
            if !any {
                if b.existing_batch_id.is_empty() {
                    st.discard_batch(&batch_id);
                }
                return Ok((String::new(), map));
            }
            Ok((batch_id, map))
        })
        .or_fail(&ctx, RTR)?;
    if batch_id.is_empty() {
        // HTTP 404 for this body is [U] (psfalcon #80 reports a 404).
        let body = json!({
            "meta": meta(&ctx, RTR), "batch_id": "", "resources": map,
            "errors": [{ "code": 404, "message": "no successful hosts initialized on RTR" }],
        });
        return Err(Reject::from(reply(404, &body)));
    }
    Ok(reply(
        201,
        &json!({ "meta": meta(&ctx, RTR), "batch_id": batch_id, "resources": map, "errors": [] }),
    ))
}

#[derive(Deserialize, Default)]
struct BatchRefreshBody {
    #[serde(default)]
    batch_id: String,
    #[serde(default)]
    hosts_to_remove: Vec<String>,
}

pub(super) async fn batch_refresh(
    State(sim): State<Simulator>,
    axum::Extension(ctx): axum::Extension<Ctx>,
    req: Request,
) -> Answer {
    let (client, ..) = timed(&ctx, &req)?;
    let b: BatchRefreshBody = json_body(req).await.or_fail(&ctx, RTR)?;
    let map = sim
        .with(|st, now| {
            let hosts: Vec<(usize, String)> = {
                let batch = st
                    .batches
                    .get(&b.batch_id)
                    .filter(|x| x.client == client.id)
                    .ok_or_else(ApiError::no_session)?;
                batch.hosts.iter().map(|(h, s)| (*h, s.clone())).collect()
            };
            let mut map = serde_json::Map::new();
            for (h, sid) in hosts {
                let aid = st.hosts[h].aid.clone();
                if b.hosts_to_remove.iter().any(|r| r.eq_ignore_ascii_case(&aid)) {
                    if let Some(batch) = st.batches.get_mut(&b.batch_id) {
                        batch.hosts.remove(&h);
                    }
                    continue;
                }
                let v = match st.session_mut(client.id, &sid, now) {
                    Ok(_) => json!({ "aid": aid, "session_id": sid, "errors": [] }),
                    Err(e) => json!({ "aid": aid, "session_id": "", "errors": [e.to_json()] }),
                };
                map.insert(aid, v);
            }
            Ok::<_, ApiError>(map)
        })
        .or_fail(&ctx, RTR)?;
    Ok(reply(201, &json!({ "meta": meta(&ctx, RTR), "resources": map, "errors": [] })))
}

#[derive(Deserialize, Default)]
struct BatchCommandBody {
    #[serde(default)]
    base_command: String,
    #[serde(default)]
    command_string: String,
    #[serde(default)]
    batch_id: String,
    #[serde(default)]
    optional_hosts: Vec<String>,
    #[serde(default)]
    persist_all: bool,
    #[serde(default)]
    file_path: String,
}

/// `POST` of a batch command at `tier`, or of batch get (`get_file`, a responder command).
pub(super) fn batch_route(tier: Tier, get_file: bool) -> MethodRouter<Simulator> {
    post(move |sim: State<Simulator>, ctx: axum::Extension<Ctx>, req: Request| {
        batch_command(tier, sim, ctx, req, get_file)
    })
}

/// A batch command (or batch get): synchronous up to `timeout` (and `host_timeout_duration`):
/// hosts done by then answer `complete: true`, slower ones `complete: false` with their
/// `task_id`, to be polled on the single-host status endpoint of the same tier (§7.3; the
/// `50401` alternative of psfalcon #56 is not produced).
async fn batch_command(
    tier: Tier,
    State(sim): State<Simulator>,
    axum::Extension(ctx): axum::Extension<Ctx>,
    req: Request,
    get_file: bool,
) -> Answer {
    let (client, q, mut timeout) = timed(&ctx, &req)?;
    if let Some(h) = q.get("host_timeout_duration").filter(|v| !v.is_empty()) {
        let h = go_duration(h).ok_or_else(|| {
            reject(&ctx, RTR, ApiError::bad_request("invalid host_timeout_duration"))
        })?;
        timeout = timeout.min(h.max(Duration::from_millis(1)));
    }
    let b: BatchCommandBody = json_body(req).await.or_fail(&ctx, RTR)?;
    let (base, line) = if get_file {
        // XSOAR double-quotes the path (§7.5); the host sees it as one argument either way.
        let p = b.file_path.trim();
        if p.is_empty() {
            return Err(reject(&ctx, RTR, ApiError::bad_request("file_path is required")));
        }
        let quoted = if p.starts_with('"') { p.to_owned() } else { format!("\"{p}\"") };
        ("get".to_owned(), format!("get {quoted}"))
    } else {
        (b.base_command.clone(), b.command_string.clone())
    };
    let started = ctx.started;
    let (results, ready, req_id) = sim
        .with(|st, now| {
            let targets = st
                .batch_targets(client.id, &b.batch_id, &b.optional_hosts)
                .ok_or_else(ApiError::no_session)?;
            let results =
                st.batch_submit(client.id, tier, &targets, &base, &line, b.persist_all, now);
            let ready = st.ready_by(&results);
            let req_id = get_file.then(|| {
                let hosts = results
                    .iter()
                    .filter_map(|(h, r)| match r {
                        PerHost::Ran { cloud_request_id, .. }
                        | PerHost::Queued { cloud_request_id, .. } => {
                            Some((*h, cloud_request_id.clone()))
                        }
                        PerHost::Failed { .. } => None,
                    })
                    .collect();
                st.new_batch_get(client.id, hosts)
            });
            Ok::<_, ApiError>((results, ready, req_id))
        })
        .or_fail(&ctx, RTR)?;
    if let Some(ready) = ready {
        let until = ready.min(state::later(started, timeout));
        tokio::time::sleep_until(tokio::time::Instant::from_std(until)).await;
    }
    let map = sim.with(|st, now| st.multi_status(&results, now));
    let mut body =
        json!({ "meta": meta(&ctx, RTR), "combined": { "resources": map }, "errors": [] });
    if let Some(id) = req_id {
        body["batch_get_cmd_req_id"] = json!(id);
    }
    Ok(reply(201, &body))
}

pub(super) async fn batch_get_status(
    State(sim): State<Simulator>,
    axum::Extension(ctx): axum::Extension<Ctx>,
    req: Request,
) -> Answer {
    let (client, q, _) = timed(&ctx, &req)?;
    let id = q.get("batch_get_cmd_req_id").unwrap_or_default();
    let map = sim
        .with(|st, now| {
            let bg = st
                .batch_gets
                .get(id)
                .filter(|g| g.client == client.id)
                .ok_or_else(|| ApiError::new(404, 404, "batch_get_cmd_req_id not found"))?;
            let mut map = serde_json::Map::new();
            // Only hosts whose upload finished (§7.5).
            for (h, crid) in &bg.hosts {
                if let Some(f) = st
                    .files
                    .iter()
                    .find(|f| f.cloud_request_id == *crid && !f.deleted && now >= f.upload_done)
                {
                    map.insert(st.hosts[*h].aid.clone(), state::State::file_v1_json(f));
                }
            }
            Ok::<_, ApiError>(map)
        })
        .or_fail(&ctx, RTR)?;
    Ok(ok(&ctx, RTR, 200, Value::Object(map), json!([])))
}
