use super::*;
use edrgate_adapter::FileRef;

fn ready(c: Command) -> ToRun {
    ToRun::Ready(c)
}

#[test]
fn requests_become_edrgate_commands() {
    let cases: Vec<(Value, &str, ToRun)> = vec![
        (
            json!({"name": "process list", "session_id": 1}),
            PROCESS_LIST,
            ready(Command::ProcessList),
        ),
        (
            json!({"name": "kill", "object": 1660, "session_id": 1}),
            KILL,
            ready(Command::KillProcess { pid: 1660, vendor_id: None }),
        ),
        (
            json!({"name": "kill", "object": "1660", "wait": true, "timeout": 120}),
            KILL,
            ready(Command::KillProcess { pid: 1660, vendor_id: None }),
        ),
        (
            json!({"name": "get file", "object": "C:\\test.txt", "session_id": 1}),
            GET_FILE,
            ready(Command::GetFile { path: "C:\\test.txt".into(), offset: None, length: None }),
        ),
        (
            json!({"name": "get file", "object": "C:\\a", "offset": 10, "get_count": 20}),
            GET_FILE,
            ready(Command::GetFile { path: "C:\\a".into(), offset: Some(10), length: Some(20) }),
        ),
        (
            json!({"name": "get file", "object": "C:\\a", "offset": 0, "get_count": 0}),
            GET_FILE,
            ready(Command::GetFile { path: "C:\\a".into(), offset: None, length: None }),
        ),
        (
            json!({"name": "put file", "object": "C:\\t\\x.bin", "file_id": 7}),
            PUT_FILE,
            ToRun::PutFile { session_file_id: 7, path: "C:\\t\\x.bin".into() },
        ),
        (
            json!({"name": "delete file", "object": "/tmp/x"}),
            DELETE_FILE,
            ready(Command::DeleteFile { path: "/tmp/x".into() }),
        ),
        (
            json!({"name": "directory list", "object": "C:\\Windows\\*"}),
            DIRECTORY_LIST,
            ready(Command::ListDirectory { path: "C:\\Windows".into() }),
        ),
        (
            json!({"name": "directory list", "object": "C:\\*"}),
            DIRECTORY_LIST,
            ready(Command::ListDirectory { path: "C:\\".into() }),
        ),
        (
            json!({"name": "directory list", "object": "/tmp/"}),
            DIRECTORY_LIST,
            ready(Command::ListDirectory { path: "/tmp".into() }),
        ),
        (
            json!({"name": "create directory", "object": "C:\\new"}),
            CREATE_DIRECTORY,
            ready(Command::CreateDirectory { path: "C:\\new".into() }),
        ),
        (
            json!({"name": "create process", "object": "cmd.exe /c dir", "wait": true,
                "working_directory": "C:\\", "output_file": "C:\\o.txt"}),
            CREATE_PROCESS,
            ready(Command::Execute {
                command_line: "cmd.exe /c dir".into(),
                wait: true,
                working_directory: Some("C:\\".into()),
                output_file: Some("C:\\o.txt".into()),
            }),
        ),
        (
            json!({"name": "create process", "object": "calc.exe"}),
            CREATE_PROCESS,
            ready(Command::Execute {
                command_line: "calc.exe".into(),
                wait: false,
                working_directory: None,
                output_file: None,
            }),
        ),
        (
            json!({"name": "reg enum key", "object": "HKLM\\Software"}),
            REG_ENUM_KEY,
            ready(Command::RegistryList { key: "HKLM\\Software".into() }),
        ),
        (
            json!({"name": "reg query value", "object": "HKLM\\Software\\K\\V"}),
            REG_QUERY_VALUE,
            ready(Command::RegistryGet { key: "HKLM\\Software\\K".into(), value: "V".into() }),
        ),
        (
            json!({"name": "reg set value", "object": "HKLM\\K\\V", "value_type": "REG_DWORD",
                "value_data": 5, "overwrite": true}),
            REG_SET_VALUE,
            ready(Command::RegistrySet {
                key: "HKLM\\K".into(),
                value: "V".into(),
                value_type: RegistryValueType::Dword,
                data: json!(5),
                overwrite: true,
            }),
        ),
        (
            json!({"name": "reg set value", "object": "HKLM\\K\\V", "value_type": "REG_DWORD",
                "value_data": "5"}),
            REG_SET_VALUE,
            ready(Command::RegistrySet {
                key: "HKLM\\K".into(),
                value: "V".into(),
                value_type: RegistryValueType::Dword,
                data: json!(5),
                overwrite: false,
            }),
        ),
        (
            json!({"name": "reg set value", "object": "HKLM\\K\\V", "value_type": "REG_MULTI_SZ",
                "value_data": ["a", "b"]}),
            REG_SET_VALUE,
            ready(Command::RegistrySet {
                key: "HKLM\\K".into(),
                value: "V".into(),
                value_type: RegistryValueType::MultiSz,
                data: json!(["a", "b"]),
                overwrite: false,
            }),
        ),
        (
            json!({"name": "reg create key", "object": "HKLM\\K"}),
            REG_CREATE_KEY,
            ready(Command::RegistryCreateKey { key: "HKLM\\K".into() }),
        ),
        (
            json!({"name": "reg delete key", "object": "HKLM\\K"}),
            REG_DELETE_KEY,
            ready(Command::RegistryDeleteKey { key: "HKLM\\K".into() }),
        ),
        (
            json!({"name": "reg delete value", "object": "HKLM\\K\\V"}),
            REG_DELETE_VALUE,
            ready(Command::RegistryDeleteValue { key: "HKLM\\K".into(), value: "V".into() }),
        ),
        (
            json!({"name": "memdump", "object": "C:\\m.dmp", "compress": false}),
            MEMDUMP,
            ready(Command::MemoryDump { path: Some("C:\\m.dmp".into()), fetch: false }),
        ),
    ];
    for (body, name, expected) in cases {
        let parsed = parse(&body).unwrap_or_else(|e| panic!("{body}: {e:?}"));
        assert_eq!(parsed.name, name, "{body}");
        assert_eq!(parsed.command, expected, "{body}");
    }
}

#[test]
fn bad_requests_are_refusals_with_a_code() {
    let cases: Vec<(Value, ErrorCode)> = vec![
        (json!({"name": "run script", "object": "x"}), ErrorCode::UnsupportedCommand),
        (json!({"object": "x"}), ErrorCode::InvalidRequest),
        (json!({"name": "kill"}), ErrorCode::InvalidRequest),
        (json!({"name": "kill", "object": "notepad"}), ErrorCode::InvalidRequest),
        (json!({"name": "get file"}), ErrorCode::InvalidRequest),
        (json!({"name": "get file", "object": "C:\\..\\x"}), ErrorCode::InvalidRequest),
        (json!({"name": "get file", "object": "C:\\x", "offset": 5}), ErrorCode::InvalidRequest),
        (json!({"name": "put file", "object": "C:\\x"}), ErrorCode::InvalidRequest),
        (json!({"name": "reg query value", "object": "HKLM"}), ErrorCode::InvalidRequest),
        (
            json!({"name": "reg set value", "object": "HKLM\\K\\V", "value_type": "REG_NOPE",
                "value_data": 1}),
            ErrorCode::InvalidRequest,
        ),
        (
            json!({"name": "reg set value", "object": "HKLM\\K\\V", "value_type": "REG_DWORD",
                "value_data": "x"}),
            ErrorCode::InvalidRequest,
        ),
        (json!({"name": "reg set value", "object": "HKLM\\K\\V"}), ErrorCode::InvalidRequest),
        (
            json!({"name": "memdump", "object": "C:\\m", "compress": true}),
            ErrorCode::UnsupportedCommand,
        ),
        (json!({"name": "create process", "object": "x", "wait": 3}), ErrorCode::InvalidRequest),
    ];
    for (body, code) in cases {
        let refusal = parse(&body).expect_err(&body.to_string());
        assert_eq!(refusal.code, code, "{body}: {refusal:?}");
    }
    let long = "x".repeat(1000);
    assert_eq!(parse(&json!({"name": long})).unwrap_err().name.len(), MAX_NAME);
}

#[test]
fn put_file_takes_the_uploaded_file() {
    let parsed = parse(&json!({"name": "put file", "object": "C:\\x", "file_id": "3"})).unwrap();
    assert_eq!(
        parsed.command.into_command(Some("f-1".into())),
        Some(Command::PutFile { file_id: "f-1".into(), path: "C:\\x".into() })
    );
}

fn row(name: &str) -> CommandRow {
    CommandRow {
        id: 3,
        session_id: 1,
        sensor_id: 1,
        name: name.into(),
        object: json!("C:\\test.txt"),
        create_time: 1517942688.4954,
        file_id: None,
        username: "dragon".into(),
    }
}

fn action<'a>(
    status: Status,
    result: Option<&'a CommandResult>,
    error: Option<&'a ErrorInfo>,
) -> State<'a> {
    State::Action { status, result, error, completion: Some(1517942688.6) }
}

#[test]
fn running_states_are_pending_and_terminal_ones_complete_or_error() {
    for status in [Status::Queued, Status::Dispatched, Status::Running] {
        let json = command_json(&row(KILL), &action(status, None, None));
        assert_eq!(json["status"], "pending", "{status:?}");
        assert_eq!(json["completion"], 0.0);
        assert!(json.get("result_code").is_none());
    }
    let done =
        command_json(&row(KILL), &action(Status::Succeeded, Some(&CommandResult::Done), None));
    assert_eq!(done["status"], "complete");
    assert_eq!(done["result_code"], 0);
    assert_eq!(done["result_type"], "WinHresult");
    assert_eq!(done["result_desc"], "");
    for status in [
        Status::Failed,
        Status::Cancelled,
        Status::TimedOut,
        Status::Skipped,
        Status::PartiallySucceeded,
    ] {
        let json = command_json(&row(KILL), &action(status, None, None));
        assert_eq!(json["status"], "error", "{status:?}");
        assert_eq!(json["result_type"], "WinHresult");
        assert!(json["result_code"].as_u64().unwrap() >= 0x8000_0000);
    }
    let cancelled = command_json(&row(KILL), &action(Status::Cancelled, None, None));
    assert_eq!(cancelled["result_code"], ERROR_CANCELLED);
}

#[test]
fn errors_carry_the_hresult_of_the_table() {
    let cases = [
        (ErrorCode::FileNotFound, None, 2147942402u32),
        (ErrorCode::AccessDenied, None, 2147942405),
        (ErrorCode::InvalidRequest, None, 2147942487),
        (ErrorCode::UnsupportedCommand, None, 2147942450),
        (ErrorCode::DeviceOffline, None, 2147943567),
        (ErrorCode::Timeout, None, 2147943860),
        (ErrorCode::OutcomeUnknown, None, 2147943860),
        (ErrorCode::Cancelled, None, 2147943623),
        (ErrorCode::VendorRejected, None, 2147946720),
        (ErrorCode::VendorAuthFailed, None, 2147946720),
        (ErrorCode::VendorRateLimited, None, 2147942570),
        (ErrorCode::VendorUnavailable, None, 2147942570),
        // Vendor HRESULTs pass through, in any of the spellings seen.
        (ErrorCode::CommandFailed, Some("0x80070020"), 0x8007_0020),
        (ErrorCode::CommandFailed, Some("2147942432"), 0x8007_0020),
        (ErrorCode::CommandFailed, Some("-2147024894"), 0x8007_0002),
        // Not an HRESULT: the edrgate code decides.
        (ErrorCode::FileNotFound, Some("FileNotFound"), 2147942402),
        (ErrorCode::FileNotFound, Some("2"), 2147942402),
    ];
    for (code, vendor, expected) in cases {
        let mut error = ErrorInfo::new(code, "it went wrong");
        if let Some(v) = vendor {
            error = error.with_vendor(v, "vendor text");
        }
        let json = command_json(&row(GET_FILE), &action(Status::Failed, None, Some(&error)));
        assert_eq!(json["status"], "error");
        assert_eq!(json["result_code"], expected, "{code:?} {vendor:?}");
        let desc = json["result_desc"].as_str().unwrap();
        assert!(desc.starts_with(code.as_str()), "{desc}");
        assert!(desc.contains("it went wrong"), "{desc}");
    }
    let unknown = ErrorInfo::new(ErrorCode::OutcomeUnknown, "the vendor did not answer");
    let json = command_json(&row(KILL), &action(Status::Failed, None, Some(&unknown)));
    assert!(json["result_desc"].as_str().unwrap().contains("outcome unknown"));
    let refused = State::Refused { code: ErrorCode::UnsupportedCommand, message: "no" };
    let json = command_json(&row("process list"), &refused);
    assert_eq!(json["status"], "error");
    assert_eq!(json["result_code"], ERROR_NOT_SUPPORTED);
    assert_eq!(json["completion"], 1517942688.4954);
}

/// The recorded 6.2 answers (../shared/fixtures/carbonblack): the fields and types match.
#[test]
fn shapes_match_the_recorded_server() {
    let mut get = row(GET_FILE);
    get.file_id = Some(2);
    let file = CommandResult::File {
        file: FileRef { file_id: "f".into(), name: "test.txt".into(), size: 1, sha256: "0".into() },
    };
    let json = command_json(&get, &action(Status::Succeeded, Some(&file), None));
    let recorded = json!({
        "status": "complete", "username": "dragon", "sensor_id": 1, "object": "C:\\test.txt",
        "create_time": 1517942688.4954, "file_id": 2, "id": 3, "completion": 1517942688.6,
        "name": "get file", "session_id": 1, "result_desc": "", "result_type": "WinHresult",
        "result_code": 0
    });
    assert_eq!(json, recorded);
    let pending = command_json(&get, &action(Status::Queued, None, None));
    assert_eq!(pending["file_id"], 2, "file_id is in the POST answer already");

    // Fixture GET …/command/4: System (pid 4) and smss (pid 340, parent 4).
    let processes = CommandResult::Processes {
        processes: vec![
            ProcessInfo {
                pid: 4,
                parent_pid: Some(0),
                name: "System".into(),
                path: None,
                command_line: None,
                username: Some("NT AUTHORITY\\SYSTEM".into()),
                sid: Some("S-1-5-18".into()),
                started_at: Some(1515775878),
                vendor_id: None,
            },
            ProcessInfo {
                pid: 340,
                parent_pid: Some(4),
                name: "smss.exe".into(),
                path: Some("c:\\windows\\system32\\smss.exe".into()),
                command_line: Some("\\SystemRoot\\System32\\smss.exe".into()),
                username: Some("NT AUTHORITY\\SYSTEM".into()),
                sid: Some("s-1-5-18".into()),
                started_at: Some(1515775878),
                vendor_id: Some("00000001-0000-0154-01d3-8bc59134afe6".into()),
            },
        ],
    };
    let mut list = row(PROCESS_LIST);
    list.object = Value::Null;
    let json = command_json(&list, &action(Status::Succeeded, Some(&processes), None));
    let p = &json["processes"];
    assert_eq!(p[0]["parent_guid"], "00000001-0000-0000-0000-000000000000");
    assert_eq!(p[0]["sid"], "s-1-5-18");
    assert_eq!(p[0]["path"], "");
    assert_eq!(p[0]["create_time"], 1515775878);
    // Synthesized: sensor, pid and the FILETIME of the start second.
    assert_eq!(p[0]["proc_guid"], "00000001-0000-0004-01d3-8bc590eac700");
    assert_eq!(p[1]["proc_guid"], "00000001-0000-0154-01d3-8bc59134afe6", "a CB guid is kept");
    assert_eq!(p[1]["parent_guid"], p[0]["proc_guid"]);
    assert_eq!(p[1]["parent"], 4);
    for key in [
        "username",
        "parent",
        "parent_guid",
        "pid",
        "command_line",
        "create_time",
        "sid",
        "path",
        "proc_guid",
    ] {
        assert!(p[1].get(key).is_some(), "{key}");
    }
}

#[test]
fn directory_registry_process_and_memdump_results() {
    let entries = CommandResult::Directory {
        entries: vec![
            DirectoryEntry {
                name: "Windows".into(),
                is_directory: true,
                size: 0,
                attributes: vec![],
                created_at: Some(1),
                modified_at: Some(2),
                accessed_at: Some(3),
            },
            DirectoryEntry {
                name: "a.txt".into(),
                is_directory: false,
                size: 9,
                attributes: vec!["FILE_ATTRIBUTE_ARCHIVE".into(), "hidden".into()],
                created_at: None,
                modified_at: None,
                accessed_at: None,
            },
        ],
    };
    let json = command_json(&row(DIRECTORY_LIST), &action(Status::Succeeded, Some(&entries), None));
    assert_eq!(
        json["files"],
        json!([
            {"filename": "Windows", "alt_name": "", "attributes": ["DIRECTORY"], "size": 0,
             "create_time": 1, "last_access_time": 3, "last_write_time": 2},
            {"filename": "a.txt", "alt_name": "", "attributes": ["ARCHIVE", "HIDDEN"], "size": 9,
             "create_time": 0, "last_access_time": 0, "last_write_time": 0},
        ])
    );
    let value = RegistryValue { name: "V".into(), value_type: "REG_SZ".into(), data: json!("x") };
    let key =
        CommandResult::RegistryKey { sub_keys: vec!["Sub".into()], values: vec![value.clone()] };
    let json = command_json(&row(REG_ENUM_KEY), &action(Status::Succeeded, Some(&key), None));
    assert_eq!(json["sub_keys"], json!(["Sub"]));
    assert_eq!(
        json["values"],
        json!([{"value_type": "REG_SZ", "value_name": "V", "value_data": "x"}])
    );
    let one = CommandResult::RegistryValue { value };
    let json = command_json(&row(REG_QUERY_VALUE), &action(Status::Succeeded, Some(&one), None));
    assert_eq!(
        json["value"],
        json!({"value_type": "REG_SZ", "value_name": "V", "value_data": "x"})
    );
    let exec = CommandResult::Execution {
        pid: Some(77),
        exit_code: Some(3),
        output: None,
        output_file: None,
    };
    let json = command_json(&row(CREATE_PROCESS), &action(Status::Succeeded, Some(&exec), None));
    assert_eq!((json["pid"].clone(), json["return_code"].clone()), (json!(77), json!(3)));
    let dump = CommandResult::MemoryDump { path: "C:\\m".into(), file: None };
    let json = command_json(&row(MEMDUMP), &action(Status::Succeeded, Some(&dump), None));
    assert_eq!(json["complete"], true);
    assert_eq!(json["percentdone"], 100);
}

#[test]
fn every_name_maps_to_a_kind() {
    for (name, kind) in COMMANDS {
        assert_eq!(kind_of(name), Some(kind));
    }
    assert_eq!(kind_of("run script"), None);
}
