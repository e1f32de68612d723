use super::*;
use serde_json::json;

#[test]
fn commands_round_trip_by_type_tag() {
    let cases = [
        (json!({"type": "process_list"}), Command::ProcessList),
        (
            json!({"type": "kill_process", "pid": 42}),
            Command::KillProcess { pid: 42, vendor_id: None },
        ),
        (
            json!({"type": "get_file", "path": "C:\\x.txt"}),
            Command::GetFile { path: "C:\\x.txt".into(), offset: None, length: None },
        ),
        (json!({"type": "isolate"}), Command::Isolate),
        (
            json!({"type": "quarantine_file", "path": "C:\\x.exe"}),
            Command::QuarantineFile { path: "C:\\x.exe".into() },
        ),
        (
            json!({"type": "unquarantine_file", "path": "C:\\x.exe"}),
            Command::UnquarantineFile { path: "C:\\x.exe".into() },
        ),
    ];
    for (wire, command) in cases {
        assert_eq!(serde_json::from_value::<Command>(wire.clone()).unwrap(), command);
    }
}

#[test]
fn quarantine_commands_are_side_effecting_writes_like_delete() {
    for kind in [CommandKind::QuarantineFile, CommandKind::UnquarantineFile] {
        assert_eq!(kind.class(), CommandKind::DeleteFile.class(), "{kind:?}");
        assert!(kind.has_side_effect(), "{kind:?}");
        assert!(CommandKind::ALL.contains(&kind), "{kind:?}");
    }
    let bad = Command::UnquarantineFile { path: "C:\\a\\..\\b".into() };
    assert!(bad.validate().is_err());
}

#[test]
fn unknown_commands_and_fields_are_rejected() {
    for wire in [
        json!({"type": "format_disk"}),
        json!({"type": "kill_process", "pid": 1, "force": true}),
        json!({"type": "kill_process"}),
        json!({"pid": 1}),
    ] {
        assert!(serde_json::from_value::<Command>(wire.clone()).is_err(), "{wire}");
    }
}

#[test]
fn validation_refuses_traversal_and_bad_registry_data() {
    let bad = [
        Command::DeleteFile { path: "C:\\temp\\..\\Windows\\x".into() },
        Command::GetFile { path: " ".into(), offset: None, length: None },
        Command::KillProcess { pid: 0, vendor_id: None },
        // A range whose end is past u64::MAX (issue 13, point 9).
        Command::GetFile { path: "C:\\x".into(), offset: Some(u64::MAX), length: Some(2) },
        Command::RegistrySet {
            key: "HKLM\\SOFTWARE\\x".into(),
            value: "v".into(),
            value_type: RegistryValueType::Dword,
            data: json!("text"),
            overwrite: false,
        },
    ];
    for command in bad {
        assert!(command.validate().is_err(), "{command:?}");
    }
    assert!(
        Command::GetFile { path: "C:\\a..b.txt".into(), offset: None, length: None }
            .validate()
            .is_ok()
    );
}

#[test]
fn device_support_splits_every_command_kind_with_reasons() {
    let caps = Capabilities {
        backend: "cb".into(),
        kind: "carbonblack".into(),
        commands: [CommandKind::ProcessList, CommandKind::RegistryList]
            .into_iter()
            .map(|command| CommandSupport { command, via: Via::Native, notes: None })
            .collect(),
        limits: Limits::default(),
    };
    let support = caps.for_device(|k| {
        (k == CommandKind::RegistryList).then(|| "Linux has no registry".to_owned())
    });
    assert_eq!(support.commands.len(), 1);
    assert_eq!(support.commands[0].command, CommandKind::ProcessList);
    assert_eq!(support.unsupported.len(), CommandKind::ALL.len() - 1);
    assert_eq!(support.refusal(CommandKind::RegistryList), Some("Linux has no registry"));
    assert!(support.refusal(CommandKind::Isolate).unwrap().contains("backend \"cb\""));
    assert_eq!(support.refusal(CommandKind::ProcessList), None);
    assert_eq!(caps.for_device(|_| None).commands, caps.commands);
}

#[test]
fn run_and_action_status_aggregate() {
    use Status::*;
    let table = [
        (vec![Queued, Queued], Queued),
        (vec![Succeeded, Running], Running),
        (vec![Succeeded, Succeeded], Succeeded),
        (vec![Failed, Skipped], Failed),
        (vec![Succeeded, Cancelled], Cancelled),
        (vec![Succeeded, TimedOut], TimedOut),
    ];
    for (commands, expected) in table {
        assert_eq!(Status::of_run(commands.clone()), expected, "{commands:?}");
    }
    assert_eq!(Status::of_action([Succeeded, Failed]), PartiallySucceeded);
    assert_eq!(Status::of_action([Failed, Failed]), Failed);
    assert_eq!(Status::of_action([Queued, Running]), Running);
}

#[test]
fn action_status_from_counts_is_the_status_of_its_runs() {
    use Status::*;
    let table: [(&[Status], Status); 9] = [
        (&[], Succeeded),
        (&[Queued, Queued], Queued),
        (&[Queued, Dispatched], Dispatched),
        (&[Queued, Succeeded], Dispatched),
        (&[Dispatched, Running, Failed], Running),
        (&[Succeeded, Failed], PartiallySucceeded),
        (&[Failed, TimedOut, Cancelled], TimedOut),
        (&[Failed, Cancelled, Skipped], Cancelled),
        (&[Failed, Skipped], Failed),
    ];
    for (runs, expected) in table {
        assert_eq!(Status::of_action(runs.iter().copied()), expected, "{runs:?}");
    }
}

#[test]
fn a_summary_moved_run_by_run_equals_the_summary_counted_afresh() {
    use Status::*;
    let commands = vec![Command::ProcessList, Command::KillProcess { pid: 4, vendor_id: None }];
    let mut runs = vec![(Queued, vec![Queued, Queued]); 3];
    let mut summary = ActionSummary::of(&commands, runs.iter().map(|(s, c)| (*s, c.as_slice())));
    let steps = [
        (0, Running, vec![Running, Queued]),
        (1, Failed, vec![Failed, Skipped]),
        (0, Succeeded, vec![Succeeded, Succeeded]),
        (2, Succeeded, vec![Succeeded, Succeeded]),
    ];
    for (run, status, states) in steps {
        let (old_status, old_states) = &runs[run];
        summary.remove_run(*old_status, old_states);
        summary.add_run(status, &states);
        runs[run] = (status, states);
        let fresh = ActionSummary::of(&commands, runs.iter().map(|(s, c)| (*s, c.as_slice())));
        assert_eq!(summary, fresh);
        assert_eq!(
            Status::of_counts(&summary.runs_by_status),
            Status::of_action(runs.iter().map(|(s, _)| *s))
        );
    }
    assert_eq!(Status::of_counts(&summary.runs_by_status), PartiallySucceeded);
}
