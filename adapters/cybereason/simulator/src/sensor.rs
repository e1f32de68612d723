//! The sensor object of a simulated machine (§6.1), as `POST /rest/sensors/query` lists it.

use crate::api;
use crate::endpoint::SimOs;
use crate::state::Runtime;

/// Whole seconds of an epoch ms (the console's scan and signature times end in `000`).
fn whole_seconds(ms: i64) -> i64 {
    ms - ms.rem_euclid(1000)
}

/// The sensor object of machine `i` (§6.1): every field of the recorded sensors, derived from
/// the simulated machine (state, boot time, processes) and a stable per-host hash.
pub(crate) fn sensor(rt: &Runtime, i: usize) -> api::Sensor {
    const DAY: i64 = 86_400_000;
    let m = &rt.machines[i];
    let now = rt.epoch_ms();
    let status = if m.archived {
        "Archived"
    } else if m.online {
        "Online"
    } else {
        "Offline"
    };
    let windows = m.os_type == "WINDOWS";
    let seed = crate::endpoint::hash64(&m.hostname).unsigned_abs();
    let spread =
        |modulus: u64, salt: u32| i64::try_from(seed.rotate_left(salt) % modulus).unwrap_or(0);
    // Booted when its first process started (the endpoint's System process).
    let boot = m
        .endpoint
        .processes
        .iter()
        .chain(&m.endpoint.ended)
        .map(|p| p.created_ms)
        .min()
        .unwrap_or(now);
    // Seen by the console 30 to 90 days before this boot.
    let first_seen = boot - (30 + spread(60, 7)) * DAY - spread(DAY as u64, 13);
    // What the sensor last reported: now while online, its disconnection otherwise.
    let last_seen = if m.online { now } else { m.disconnected_at.max(boot) };
    let live = m.online && !m.archived;
    let processes = i64::try_from(m.endpoint.processes.len()).unwrap_or(0);
    let cpu_usage = if live {
        (0.002 + 0.0015 * processes as f64 + spread(1000, 19) as f64 / 200_000.0).min(1.0)
    } else {
        0.0
    };
    let memory_usage = if live { (96 + 12 * processes + spread(64, 23)) << 20 } else { 0 };
    // Quick scan every day, full scan every week, before the last report.
    let quick_scan = whole_seconds(last_seen - spread(DAY as u64, 29));
    let full_scan = whole_seconds(last_seen - spread(7 * DAY as u64, 31));
    api::Sensor {
        sensor_id: m.sensor_id.clone(),
        pylum_id: m.pylum_id.clone(),
        guid: m.guid(),
        fqdn: m.hostname.to_lowercase(),
        machine_name: m.hostname.clone(),
        internal_ip_address: format!("10.1.0.{}", i + 10),
        external_ip_address: "203.0.113.7".into(),
        site_name: "Default",
        site_id: 0,
        ransomware_status: "DISABLED",
        prevention_status: if windows { "ENABLED" } else { "NOT_INSTALLED" },
        isolated: m.isolated,
        disconnection_time: m.disconnected_at,
        last_pylum_info_msg_update_time: last_seen - spread(60_000, 37),
        last_pylum_update_timestamp_ms: last_seen,
        status,
        service_status: if live { "Up" } else { "Down" },
        online_time_ms: 0,
        offline_time_ms: 0,
        stale_time_ms: 0,
        // The archiving is not stamped: its time is unknown, `null` as in the capture.
        archive_time_ms: if m.archived { None } else { Some(0) },
        status_time_ms: 0,
        last_status_action: if m.archived { "Archive" } else { "None" },
        archived_or_unarchive_comment: String::new(),
        sensor_archived_by_user: String::new(),
        server_name: "sim-1-t",
        server_id: m.sensor_id.split(':').next().unwrap_or_default().to_owned(),
        server_ip: "203.0.113.2",
        private_server_ip: "10.1.0.2",
        collective_uuid: "70b8b433-e8ba-4375-8eb5-1c0d95c62120",
        os_type: m.os_type,
        os_version_type: m.endpoint.os.os_version_type(),
        collection_status: "ADVANCED",
        version: "21.2.300.0",
        console_version: None,
        first_seen_time: first_seen,
        up_time: last_seen - boot,
        cpu_usage,
        memory_usage,
        outdated: false,
        am_status: "AM_DETECT_DISINFECT",
        am_mode_origin: None,
        av_db_version: format!("{}", 87_300 + spread(20, 41)),
        av_db_last_update_time: whole_seconds(last_seen - spread(6 * 3_600_000, 43)),
        power_shell_status: "PS_DISABLED",
        remote_shell_status: "AC_ENABLED",
        usb_status: "DISABLED",
        fw_status: "DISABLED",
        anti_exploit_status: if windows { "AE_DISABLED" } else { "AE_UNKNOWN" },
        document_protection_status: if windows { "DS_DISABLED" } else { "DS_UNKNOWN" },
        document_protection_mode: if windows { "DM_CAUTIOUS" } else { "DM_UNKNOWN" },
        serial_number: format!("SIM-{:010}", seed % 10_000_000_000),
        device_model: match m.endpoint.os {
            SimOs::Windows => "Intel(R) Core(TM) i7-9750H CPU @ 2.60GHz",
            SimOs::Linux => "Red Hat\n",
            SimOs::MacOs => "Apple M1 Pro",
        },
        organizational_unit: String::new(),
        anti_malware_status: "AM_ENABLED",
        anti_malware_mode_origin: None,
        organization: "simulator",
        proxy_address: String::new(),
        prevention_error: String::new(),
        exit_reason: "STOP_REQUEST_FROM_PYLUM",
        actions_in_progress: 0,
        pending_actions: Vec::new(),
        last_upgrade_result: None,
        department: None,
        location: None,
        critical_asset: None,
        device_type: None,
        custom_tags: None,
        last_upgrade_steps: Vec::new(),
        disconnected: !m.online,
        static_analysis_detect_mode: "DISABLED",
        static_analysis_detect_mode_origin: None,
        static_analysis_prevent_mode: "DISABLED",
        static_analysis_prevent_mode_origin: None,
        collection_components: if windows { vec!["Metadata"] } else { Vec::new() },
        sensor_last_update: 0,
        full_scan_status: "UNKNOWN",
        quick_scan_status: "UNKNOWN",
        last_full_schedule_scan_success_time: full_scan,
        last_quick_schedule_scan_success_time: quick_scan,
        policy_name: "Default",
        delivery_time: boot + 300_000 + spread(60_000, 47),
        policy_id: "0ec660dc-5354-4af1-964e-f32fd0bf8a1e",
        compliance: true,
        group_id: "72a61eac-6f79-4670-8607-a1334ddd2ff0",
        group_name: "Simulated",
        group_stickiness: true,
        group_stickiness_label: "Manual",
    }
}
