use std::sync::{Arc, Mutex};

use indicatif::TermLike;
use serde_json::json;

use super::*;

/// A terminal in memory: what indicatif draws, as the screen would show it (lines wrap at
/// the width, the cursor moves up to redraw).
#[derive(Clone, Debug)]
struct Screen {
    inner: Arc<Mutex<Grid>>,
}

#[derive(Debug, Default)]
struct Grid {
    width: usize,
    rows: Vec<Vec<char>>,
    row: usize,
    col: usize,
}

impl Grid {
    fn put(&mut self, c: char) {
        match c {
            '\r' => self.col = 0,
            '\n' => (self.row, self.col) = (self.row + 1, 0),
            c => {
                if self.col >= self.width {
                    (self.row, self.col) = (self.row + 1, 0);
                }
                while self.rows.len() <= self.row {
                    self.rows.push(Vec::new());
                }
                let line = &mut self.rows[self.row];
                line.resize(line.len().max(self.col + 1), ' ');
                line[self.col] = c;
                self.col += 1;
            }
        }
    }
}

impl Screen {
    fn new(width: usize) -> Screen {
        Screen { inner: Arc::new(Mutex::new(Grid { width, ..Grid::default() })) }
    }

    fn contents(&self) -> String {
        let grid = self.inner.lock().unwrap();
        let lines: Vec<String> =
            grid.rows.iter().map(|r| r.iter().collect::<String>().trim_end().to_owned()).collect();
        lines.join("\n").trim_end().to_owned()
    }
}

impl TermLike for Screen {
    fn width(&self) -> u16 {
        self.inner.lock().unwrap().width as u16
    }

    fn move_cursor_up(&self, n: usize) -> io::Result<()> {
        let mut grid = self.inner.lock().unwrap();
        grid.row = grid.row.saturating_sub(n);
        grid.col = grid.col.min(grid.width - 1);
        Ok(())
    }

    fn move_cursor_down(&self, n: usize) -> io::Result<()> {
        self.inner.lock().unwrap().row += n;
        Ok(())
    }

    fn move_cursor_right(&self, n: usize) -> io::Result<()> {
        let mut grid = self.inner.lock().unwrap();
        grid.col = (grid.col + n).min(grid.width - 1);
        Ok(())
    }

    fn move_cursor_left(&self, n: usize) -> io::Result<()> {
        let mut grid = self.inner.lock().unwrap();
        grid.col = grid.col.saturating_sub(n);
        Ok(())
    }

    fn write_line(&self, s: &str) -> io::Result<()> {
        self.write_str(s)?;
        self.write_str("\n")
    }

    fn write_str(&self, s: &str) -> io::Result<()> {
        let mut grid = self.inner.lock().unwrap();
        s.chars().for_each(|c| grid.put(c));
        Ok(())
    }

    fn clear_line(&self) -> io::Result<()> {
        let mut grid = self.inner.lock().unwrap();
        let row = grid.row;
        if let Some(line) = grid.rows.get_mut(row) {
            line.clear();
        }
        grid.col = 0;
        Ok(())
    }

    fn flush(&self) -> io::Result<()> {
        Ok(())
    }
}

/// A buffer the plain view writes to, readable afterwards.
#[derive(Clone, Default)]
struct Buffer(Arc<Mutex<Vec<u8>>>);

impl Write for Buffer {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

const RUN_IDS: [&str; 4] = [
    "01a20000-0000-7000-8000-000000000001",
    "01a20000-0000-7000-8000-000000000002",
    "01a20000-0000-7000-8000-000000000003",
    "01a20000-0000-7000-8000-000000000004",
];

/// A process list on four hosts, each run in the given status (a finished one with its
/// result or error).
fn fan_out(statuses: [&str; 4]) -> Action {
    let targets = [
        json!({"hostname": "WIN-0001"}),
        json!({"hostname": "WIN-0002"}),
        json!({"hostname": "WIN-9999"}),
        json!({"backend": "cb", "device_id": "4"}),
    ];
    let runs: Vec<_> = statuses
        .iter()
        .zip(targets)
        .zip(RUN_IDS)
        .map(|((status, target), id)| {
            let mut command = json!({"index": 0, "type": "process_list", "status": status});
            let mut run = json!({"id": id, "target": target, "status": status});
            match *status {
                "succeeded" => {
                    run["backend"] = json!("cb");
                    command["result"] = json!({"type": "processes", "processes": [
                        {"pid": 4, "name": "System"},
                        {"pid": 3012, "parent_pid": 4, "name": "updater\u{1b}[31m.exe",
                         "username": "CORP\\alice", "command_line": "updater.exe --quiet"},
                    ]});
                }
                "failed" => {
                    run["error"] = json!({"code": "device_not_found",
                                          "message": "no backend knows the hostname"});
                    command["status"] = json!("skipped");
                }
                _ => {}
            }
            run["commands"] = json!([command]);
            run
        })
        .collect();
    let all: Vec<Status> = statuses.iter().map(|s| Status::parse(s).unwrap()).collect();
    serde_json::from_value(json!({
        "id": "01a20000-0000-7000-8000-00000000000a",
        "status": Status::of_action(all),
        "on_error": "stop",
        "commands": [{"type": "process_list"}],
        "runs": runs,
        "created_at": "2026-12-04T21:00:00Z",
        "updated_at": "2026-12-04T21:00:01Z",
        "cancel_requested": false,
    }))
    .unwrap()
}

/// The live view on a terminal, as an analyst sees it while a fan-out runs and once it ended:
/// finished runs above the bar, the bar with the counts (queued runs are those waiting on
/// vendor budgets), nothing an endpoint sent drives the terminal.
#[test]
fn the_live_view_on_a_terminal() {
    let screen = Screen::new(100);
    let mut live = LiveView::on(ProgressDrawTarget::term_like(Box::new(screen.clone())));
    live.update(&fan_out(["queued"; 4]));
    assert_eq!(
        screen.contents(),
        "------------------------------ 0/4 runs  4 waiting on vendor limits"
    );
    live.update(&fan_out(["succeeded", "running", "queued", "queued"]));
    // The same state again (a long-poll answering at its timeout) prints nothing new.
    live.update(&fan_out(["succeeded", "running", "queued", "queued"]));
    assert_eq!(
        screen.contents(),
        "\
WIN-0001  succeeded  process_list: 2 processes
#######>---------------------- 1/4 runs  1 succeeded · 1 running · 2 waiting on vendor limits"
    );
    live.update(&fan_out(["succeeded", "succeeded", "failed", "succeeded"]));
    live.finish();
    assert_eq!(
        screen.contents(),
        "\
WIN-0001  succeeded  process_list: 2 processes
WIN-0002  succeeded  process_list: 2 processes
WIN-9999  failed  device_not_found: no backend knows the hostname
cb:4  succeeded  process_list: 2 processes
############################## 4/4 runs  3 succeeded · 1 failed"
    );
}

/// Off a terminal, the same updates are plain lines: no bar, no escapes.
#[test]
fn the_live_view_off_a_terminal_is_plain_lines() {
    let buffer = Buffer::default();
    let mut live = LiveView::plain(Box::new(buffer.clone()));
    live.update(&fan_out(["queued"; 4]));
    live.update(&fan_out(["succeeded", "running", "queued", "queued"]));
    live.update(&fan_out(["succeeded", "succeeded", "failed", "succeeded"]));
    live.finish();
    let text = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
    assert_eq!(
        text,
        "WIN-0001  succeeded  process_list: 2 processes\n\
         WIN-0002  succeeded  process_list: 2 processes\n\
         WIN-9999  failed  device_not_found: no backend knows the hostname\n\
         cb:4  succeeded  process_list: 2 processes\n"
    );
}

#[test]
fn results_are_tables_across_hosts_with_escapes_defused() {
    let mut out = Vec::new();
    action(&mut out, &fan_out(["succeeded", "failed", "succeeded", "succeeded"])).unwrap();
    let text = String::from_utf8(out).unwrap();
    assert!(!text.contains('\u{1b}'), "{text}");
    let expected = r"action 01a20000-0000-7000-8000-00000000000a  partially_succeeded  4 runs: 3 succeeded · 1 failed

HOST      BACKEND  DEVICE  STATUS     DETAIL
WIN-0001  cb       -       succeeded  process_list: 2 processes
WIN-0002  -        -       failed     device_not_found: no backend knows the hostname
WIN-9999  cb       -       succeeded  process_list: 2 processes
cb:4      cb       -       succeeded  process_list: 2 processes

1. process_list
HOST      PID   PPID  NAME                   USER        COMMAND LINE
WIN-0001  4     -     System                 -
WIN-0001  3012  4     updater\u{1b}[31m.exe  CORP\alice  updater.exe --quiet
WIN-9999  4     -     System                 -
WIN-9999  3012  4     updater\u{1b}[31m.exe  CORP\alice  updater.exe --quiet
cb:4      4     -     System                 -
cb:4      3012  4     updater\u{1b}[31m.exe  CORP\alice  updater.exe --quiet
";
    assert_eq!(text, expected);
}

#[test]
fn control_characters_are_shown_not_sent() {
    assert_eq!(clean("a\u{1b}]0;x\u{7}b\nc\td"), "a\\u{1b}]0;x\\u{7}b\nc\td");
    assert_eq!(clean("evil\u{202e}txt.exe"), "evil\\u{202e}txt.exe");
    assert_eq!(cell("two\nlines"), "two lines");
}
