//! The language specification's own examples (LS v1.0 CS02 §4.2 and Annex A), parsed and
//! answered as the specification shows, and the extension spellings of front-doors.md §2.3.

use serde_json::{Value, json};

use super::*;
use crate::frontdoor::openc2::pairs;

fn parse_value(value: &Value) -> Result<Request, Malformed> {
    parse(&serde_json::to_vec(value).unwrap())
}

#[test]
fn the_language_specification_examples_parse() {
    // (section, command, action, target, response_requested)
    let table = [
        (
            "LS10 §4.2.1",
            json!({"action": "query", "target": {"features": []}}),
            "query",
            "features",
            ResponseRequested::Complete,
        ),
        (
            "LS10 §4.2.2",
            json!({"action": "query", "target": {"features": ["versions", "profiles", "rate_limit"]}}),
            "query",
            "features",
            ResponseRequested::Complete,
        ),
        (
            "LS10 A.1",
            json!({"action": "contain", "target": {"device": {"device_id": "9BCE8431AC106FAA3861C7E771D20E53"}}}),
            "contain",
            "device",
            ResponseRequested::Complete,
        ),
        (
            "LS10 A.2",
            json!({
                "action": "deny",
                "target": {"ipv4_connection": {"protocol": "tcp", "src_addr": "1.2.3.4", "src_port": 10996, "dst_addr": "198.2.3.4", "dst_port": 80}},
                "args": {"start_time": 1534775460000u64, "duration": 500, "response_requested": "ack", "slpf": {"drop_process": "none"}},
                "actuator": {"slpf": {"asset_id": "30"}}
            }),
            "deny",
            "ipv4_connection",
            ResponseRequested::Ack,
        ),
        (
            "LS10 A.3",
            json!({"action": "query", "target": {"properties": ["battery"]}, "actuator": {"x-esm": {"asset_id": "TGEadsasd"}}}),
            "query",
            "properties",
            ResponseRequested::Complete,
        ),
    ];
    for (section, command, action, target, rr) in table {
        let parsed = parse_value(&command).unwrap_or_else(|e| panic!("{section}: {e:?}"));
        assert!(!parsed.enveloped, "{section}");
        assert_eq!(parsed.command.action, action, "{section}");
        assert_eq!(parsed.command.target, target, "{section}");
        assert_eq!(parsed.command.response_requested, rr, "{section}");
    }
}

#[test]
fn the_specification_responses_serialise_as_shown() {
    // LS10 §4.2.1, §4.2.2 and A.2.
    assert_eq!(Reply::new(200).to_value(), json!({"status": 200}));
    let example2 = Reply::new(200).results(json!({
        "versions": ["1.0"], "profiles": ["slpf", "x-lock"], "rate_limit": 30
    }));
    assert_eq!(
        example2.to_value(),
        json!({"status": 200, "results": {"versions": ["1.0"], "profiles": ["slpf", "x-lock"], "rate_limit": 30}})
    );
    assert_eq!(Reply::new(102).to_value(), json!({"status": 102}));
    let refused = Reply::error(501, "Command not supported");
    assert_eq!(refused.to_value(), json!({"status": 501, "status_text": "Command not supported"}));
    // HTTPS v1.1 §3.3.2 / App. E: the response message around it.
    let message = Reply::new(200).envelope(Some("d1ac0489"), Some("soar-1"), 1_764_670_000_000);
    assert_eq!(
        message,
        json!({"headers": {"request_id": "d1ac0489", "created": 1_764_670_000_000i64, "from": "edrgate", "to": ["soar-1"]},
               "body": {"openc2": {"response": {"status": 200}}}})
    );
}

#[test]
fn the_https_envelope_is_parsed() {
    // front-doors.md §2.2 (layout of HTTPS v1.1 App. E).
    let message = json!({
        "headers": {"request_id": "d1ac0489-ed51-4345-9175-f3078f30afe5", "created": 1764669990000u64, "from": "soar-1"},
        "body": {"openc2": {"request": {
            "action": "stop", "target": {"process": {"pid": 3012}},
            "args": {"response_requested": "complete",
                     "er": {"downstream_device": {"devices": [{"hostname": "WIN-0001"}], "tenant_id": "acme"}}},
            "actuator": {"er": {}}}}}
    });
    let parsed = parse_value(&message).unwrap();
    assert!(parsed.enveloped);
    assert_eq!(parsed.request_id.as_deref(), Some("d1ac0489-ed51-4345-9175-f3078f30afe5"));
    assert_eq!(parsed.from.as_deref(), Some("soar-1"));
    assert_eq!(parsed.command.pair(), "stop process");
    let devices = &parsed.command.arg("er", "downstream_device").unwrap()["devices"];
    assert_eq!(devices[0]["hostname"], "WIN-0001");
    let edr = pairs::edrgate_command(&parsed.command).unwrap().unwrap();
    assert_eq!(edr, edrgate_adapter::Command::KillProcess { pid: 3012, vendor_id: None });
}

#[test]
fn the_three_extension_spellings_are_one_target() {
    let entry = json!({"key": "HKLM\\Software\\Acme\\Level", "type": "REG_DWORD", "value": "3"});
    for target in [
        json!({"er:registry_entry": entry}),
        json!({"er/registry_entry": entry}),
        json!({"er": {"registry_entry": entry}}),
    ] {
        let command = json!({"action": "set", "target": target, "args": {"er:downstream_device": {"devices": [{"hostname": "h"}]}}});
        let parsed = parse_value(&command).unwrap();
        assert_eq!(parsed.command.target, "er:registry_entry", "{target}");
        assert!(parsed.command.arg("er", "downstream_device").is_some());
        let edr = pairs::edrgate_command(&parsed.command).unwrap().unwrap();
        assert_eq!(
            edr,
            edrgate_adapter::Command::RegistrySet {
                key: "HKLM\\Software\\Acme".into(),
                value: "Level".into(),
                value_type: edrgate_adapter::RegistryValueType::Dword,
                data: json!(3),
                overwrite: true,
            }
        );
    }
}

#[test]
fn malformed_commands_are_refused_with_a_reason() {
    let table = [
        (json!([]), "object"),
        (json!({"target": {"features": []}}), "action is required"),
        (json!({"action": "explode", "target": {"features": []}}), "unknown action"),
        (json!({"action": "query"}), "target is required"),
        (json!({"action": "query", "target": {"features": [], "device": {}}}), "exactly one"),
        (json!({"action": "query", "target": {"features": []}, "args": {}}), "at least one"),
        (
            json!({"action": "query", "target": {"features": []}, "args": {"response_requested": "later"}}),
            "response_requested",
        ),
        (
            json!({"action": "query", "target": {"features": []}, "args": {"colour": "red"}}),
            "unknown argument",
        ),
        (
            json!({"action": "query", "target": {"features": []}, "extra": 1}),
            "unknown command field",
        ),
        (
            json!({"headers": {}, "body": {"openc2": {"response": {"status": 200}}}}),
            "body.openc2.request",
        ),
    ];
    for (command, expected) in table {
        let error = parse_value(&command).unwrap_err();
        assert!(error.0.contains(expected), "{command}: {error:?}");
    }
    assert!(parse(b"{not json").unwrap_err().0.starts_with("not JSON"));
}

#[test]
fn er_argument_checks_use_the_profile_wording() {
    let command = |value: Value| parse_value(&value).unwrap().command;
    // LS10 A.1 has no device_containment: ER §2.3.3.1.
    let a1 = command(json!({"action": "contain", "target": {"device": {"device_id": "9BCE"}}}));
    assert_eq!(
        pairs::edrgate_command(&a1).unwrap().unwrap_err(),
        (400, "Containment type argument not populated".to_owned())
    );
    let nic = command(
        json!({"action": "contain", "target": {"device": {"hostname": "h"}}, "args": {"er": {"device_containment": "disable_nic"}}}),
    );
    assert_eq!(pairs::edrgate_command(&nic).unwrap().unwrap_err().0, 501);
    let empty = command(json!({"action": "stop", "target": {"process": {}}}));
    assert_eq!(
        pairs::edrgate_command(&empty).unwrap().unwrap_err(),
        (400, "Process Target does not have any properties populated".to_owned())
    );
    let untyped = command(
        json!({"action": "set", "target": {"er": {"registry_entry": {"key": "HKLM\\A\\B", "value": "x"}}}}),
    );
    assert_eq!(
        pairs::edrgate_command(&untyped).unwrap().unwrap_err(),
        (400, "Registry entry type not specified".to_owned())
    );
    let deny = command(json!({"action": "deny", "target": {"ipv4_net": "10.0.0.0/8"}}));
    assert!(pairs::edrgate_command(&deny).is_none(), "deny ipv4_net is not a pair edrgate has");
}
