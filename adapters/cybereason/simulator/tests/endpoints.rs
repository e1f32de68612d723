//! The simulated machines as the console's query API shows them (issue 12, point 19): the
//! system processes, files and sensor a responder looks at first on Windows, Linux and macOS,
//! and the quarantine of an indexed file and its way back (§6.1, §6.3).

use std::time::Duration;

use edrgate_cybereason_sim::{
    DEFAULT_PASSWORD, DEFAULT_USERNAME, Sim as _, SimConfig, SimOs, Simulator,
};
use reqwest::StatusCode;
use reqwest::header::{COOKIE, SET_COOKIE};
use serde_json::{Value, json};

struct Console {
    http: reqwest::Client,
    base: String,
    cookie: String,
}

impl Console {
    async fn new(sim: &Simulator) -> Console {
        let addr = sim.spawn().await.unwrap();
        let http =
            reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
        let base = format!("http://{addr}");
        let r = http
            .post(format!("{base}/login.html"))
            .form(&[("username", DEFAULT_USERNAME), ("password", DEFAULT_PASSWORD)])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::FOUND);
        let cookie =
            r.headers()[SET_COOKIE].to_str().unwrap().split(';').next().unwrap().to_owned();
        Console { http, base, cookie }
    }

    async fn post(&self, path: &str, body: &Value) -> Value {
        let r = self
            .http
            .post(format!("{}{path}", self.base))
            .header(COOKIE, &self.cookie)
            .json(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{path}");
        r.json().await.unwrap()
    }

    async fn get(&self, path: &str) -> Value {
        let r =
            self.http.get(format!("{}{path}", self.base)).header(COOKIE, &self.cookie).send().await;
        r.unwrap().json().await.unwrap()
    }

    /// Machine `host` → `feature` → elements of `kind` (optionally filtered), by GUID.
    async fn elements(
        &self,
        host: &str,
        feature: &str,
        kind: &str,
        filter: Option<(&str, &str)>,
    ) -> serde_json::Map<String, Value> {
        let filters: Vec<Value> = filter
            .map(|(facet, value)| json!({"facetName": facet, "values": [value]}))
            .into_iter()
            .collect();
        let q = json!({"queryPath": [
            {"requestedType": "Machine", "filters": [{"facetName": "elementDisplayName", "values": [host]}],
             "connectionFeature": {"elementInstanceType": "Machine", "featureName": feature}},
            {"requestedType": kind, "filters": filters, "isResult": true}]});
        let v = self.post("/rest/visualsearch/query/simple", &q).await;
        assert_eq!(v["status"], "SUCCESS");
        v["data"]["resultIdToElementDataMap"].as_object().unwrap().clone()
    }

    /// The machine's live processes: `(name, parent name, user, image path, creation ms)`.
    async fn processes(&self, host: &str) -> Vec<(String, String, String, String, i64)> {
        let all = self.elements(host, "processes", "Process", None).await;
        let first =
            |e: &Value, f: &str| e["simpleValues"][f]["values"][0].as_str().map(str::to_owned);
        let linked = |e: &Value, f: &str| {
            e["elementValues"][f]["elementValues"][0]["name"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        };
        all.values()
            .filter(|e| first(e, "endTime").is_none())
            .map(|e| {
                (
                    first(e, "elementDisplayName").unwrap(),
                    linked(e, "parentProcess"),
                    linked(e, "calculatedUser"),
                    first(e, "imageFile.correctedPath").unwrap_or_default(),
                    first(e, "creationTime").unwrap().parse().unwrap(),
                )
            })
            .collect()
    }

    /// Starts a remediation without a malop and waits until its one action reported an end.
    async fn remediate(&self, host: &str, action: &str, target: &str) -> Value {
        let s = self
            .post(
                "/rest/sensors/query",
                &json!({"filters": [{"fieldName": "machineName", "operator": "Equals", "values": [host]}]}),
            )
            .await;
        let guid = s["sensors"][0]["guid"].as_str().unwrap().to_owned();
        let body = json!({"initiatorUserName": DEFAULT_USERNAME,
            "actionsByMachine": {guid: [{"targetId": target, "actionType": action}]}});
        let r = self.post("/rest/remediate", &body).await;
        let progress = format!(
            "/rest/remediate/progress/{DEFAULT_USERNAME}/NOMALOP/{}",
            r["remediationId"].as_str().unwrap()
        );
        for _ in 0..500 {
            let v = self.get(&progress).await;
            let status = v["statusLog"][0]["status"].as_str().unwrap_or_default().to_owned();
            if status == "SUCCESS" || status == "FAILURE" {
                return v["statusLog"][0].clone();
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("{action} of {target} did not end");
    }
}

fn fast() -> SimConfig {
    SimConfig { remediation_delay: Duration::from_millis(20), ..SimConfig::default() }
}

#[tokio::test]
async fn windows_machines_show_the_system_process_tree_and_the_sensor() {
    let sim = Simulator::new(fast());
    let c = Console::new(&sim).await;
    let ps = c.processes("CR-WS-0001").await;
    let find =
        |name: &str| ps.iter().find(|p| p.0 == name).unwrap_or_else(|| panic!("{name}: {ps:#?}"));
    // Session 0: wininit.exe starts services.exe and lsass.exe; its smss.exe instance ended.
    let lsass = find("lsass.exe");
    assert_eq!(lsass.1, "wininit.exe");
    assert_eq!(lsass.2, "cr-ws-0001\\system", "the machine's own account, as the console names it");
    assert_eq!(lsass.3, "c:\\windows\\system32\\lsass.exe");
    assert_eq!(find("services.exe").1, "wininit.exe");
    assert_eq!(find("wininit.exe").1, "smss.exe");
    assert_eq!(find("winlogon.exe").1, "smss.exe");
    assert_eq!(find("smss.exe").1, "System");
    for name in ["System", "Registry", "csrss.exe", "spoolsv.exe", "dwm.exe", "sihost.exe"] {
        find(name);
    }
    let svchosts: Vec<_> = ps.iter().filter(|p| p.0 == "svchost.exe").collect();
    assert!(svchosts.len() >= 4, "{svchosts:#?}");
    assert!(svchosts.iter().all(|p| p.1 == "services.exe"), "{svchosts:#?}");
    assert!(svchosts.iter().any(|p| p.2 == "cr-ws-0001\\network service"));
    // The sensor's own processes.
    let minion = find("minionhost.exe");
    assert_eq!(minion.1, "services.exe");
    assert!(minion.3.ends_with("cybereason activeprobe\\minionhost.exe"), "{minion:?}");
    // The user's session: explorer.exe's parent userinit.exe exited, and is still its parent.
    let explorer = find("explorer.exe");
    assert_eq!((explorer.1.as_str(), explorer.2.as_str()), ("userinit.exe", "CORP\\jdoe"));
    assert_eq!(find("notepad.exe").1, "explorer.exe");
    // Started in boot order: System first, the user's programs after the logon.
    assert!(
        find("System").4 < lsass.4 && lsass.4 < explorer.4 && explorer.4 < find("notepad.exe").4
    );

    // The images and the usual files are indexed File elements; win.ini never was.
    for path in [
        "c:\\windows\\system32\\drivers\\etc\\hosts",
        "c:\\windows\\system32\\lsass.exe",
        "c:\\windows\\system32\\config\\sam",
        "c:\\evidence\\note.txt",
    ] {
        let found = c.elements("CR-WS-0001", "files", "File", Some(("correctedPath", path))).await;
        assert_eq!(found.len(), 1, "{path}");
    }
    let unindexed =
        c.elements("CR-WS-0001", "files", "File", Some(("correctedPath", "c:\\windows\\win.ini")));
    assert!(unindexed.await.is_empty());
    assert!(sim.file_content("CR-WS-0001", "C:\\Windows\\win.ini").is_some(), "on the disk");
    let s = c
        .post("/rest/sensors/query", &json!({"filters": [{"fieldName": "machineName", "operator": "Equals", "values": ["CR-WS-0001"]}]}))
        .await;
    assert_eq!(s["sensors"][0]["osType"], "WINDOWS");
}

#[tokio::test]
async fn linux_and_macos_machines_have_their_own_systems() {
    let sim = Simulator::new(SimConfig {
        os_types: vec![(2, SimOs::Linux), (3, SimOs::MacOs)],
        ..fast()
    });
    let c = Console::new(&sim).await;
    let linux = c.processes("CR-WS-0002").await;
    let find = |ps: &[(String, String, String, String, i64)], name: &str, parent: &str| {
        assert!(ps.iter().any(|p| p.0 == name && p.1 == parent), "{name} < {parent}: {ps:#?}");
    };
    find(&linux, "systemd", "");
    find(&linux, "sshd", "systemd");
    find(&linux, "sshd", "sshd");
    find(&linux, "bash", "sshd");
    find(&linux, "cybereason-sensor", "systemd");
    assert!(linux.iter().all(|p| !p.0.ends_with(".exe")), "{linux:#?}");
    let mac = c.processes("CR-WS-0003").await;
    find(&mac, "launchd", "");
    find(&mac, "loginwindow", "launchd");
    find(&mac, "zsh", "login");
    let sensors = c.post("/rest/sensors/query", &json!({})).await;
    let os: Vec<(&str, &str)> = sensors["sensors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["machineName"].as_str().unwrap(), s["osType"].as_str().unwrap()))
        .collect();
    assert!(os.contains(&("CR-WS-0002", "LINUX")) && os.contains(&("CR-WS-0003", "OSX")), "{os:?}");
    for host in ["CR-WS-0002", "CR-WS-0003"] {
        let hosts = c.elements(host, "files", "File", Some(("correctedPath", "/etc/hosts"))).await;
        assert_eq!(hosts.len(), 1, "{host}");
        let registry = c.elements(host, "registryEvents", "RegistryEvent", None).await;
        assert!(registry.is_empty(), "{host} has no registry");
    }
}

#[tokio::test]
async fn an_indexed_file_is_quarantined_and_comes_back_by_its_quarantined_element() {
    let sim = Simulator::new(fast());
    let c = Console::new(&sim).await;
    let host = "CR-WS-0001";
    let path = "c:\\windows\\system32\\drivers\\etc\\hosts";
    let content = sim.file_content(host, path).unwrap();
    let files = c.elements(host, "files", "File", Some(("correctedPath", path))).await;
    let file = files.keys().next().unwrap().clone();
    let done = c.remediate(host, "QUARANTINE_FILE", &file).await;
    assert_eq!(done["status"], "SUCCESS", "{done}");
    assert!(sim.file_content(host, path).is_none(), "the file left its place");
    assert!(sim.is_quarantined(host, path));
    assert!(c.elements(host, "files", "File", Some(("correctedPath", path))).await.is_empty());

    // The quarantine holds it as an element of its own, by its original path.
    let q = json!({"queryPath": [{"requestedType": "QuarantineFile",
        "filters": [{"facetName": "correctedPath", "values": [path]}], "isResult": true}]});
    let found = c.post("/rest/visualsearch/query/simple", &q).await;
    let found = found["data"]["resultIdToElementDataMap"].as_object().unwrap().clone();
    assert_eq!(found.len(), 1, "{found:#?}");
    let (quarantined, e) = found.iter().next().unwrap();
    assert_ne!(quarantined, &file);
    assert_eq!(e["elementValues"]["ownerMachine"]["elementValues"][0]["name"], "cr-ws-0001");
    // UNQUARANTINE_FILE of the original File element: not a target any more.
    let wrong = c.remediate(host, "UNQUARANTINE_FILE", &file).await;
    assert_eq!(wrong["error"]["errorType"], "INVALID_ARGUMENT", "{wrong}");
    let back = c.remediate(host, "UNQUARANTINE_FILE", quarantined).await;
    assert_eq!(back["status"], "SUCCESS", "{back}");
    assert_eq!(sim.file_content(host, path), Some(content), "back in its place, unchanged");
    assert!(!sim.is_quarantined(host, path));
    assert_eq!(sim.counters().remediations_executed, 2);
}

#[tokio::test]
async fn unquarantine_needs_console_20_1_120() {
    let sim = Simulator::new(SimConfig { version: "20.1.81".into(), ..fast() });
    let c = Console::new(&sim).await;
    let done = c.remediate("CR-WS-0001", "UNQUARANTINE_FILE", "1.2").await;
    assert_eq!(done["status"], "FAILURE");
    assert_eq!(done["error"]["errorType"], "UNSUPPORTED_ACTION", "{done}");
}
