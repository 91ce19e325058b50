//! Draws a [`View`] into a ratatui [`Buffer`]: the dashboard (pools, Jobs, Workflows), the Job
//! detail, the too-small notice, and [`plain`] — the same frame as text for `--once`.
//!
//! Owns: layout, columns, bars, sparklines, number formats. Must not: fetch, read the clock or
//! the terminal size (the caller gives the area).

use ratatui::Frame;
use ratatui::buffer::Buffer;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Cell, Gauge, Paragraph, Row, StatefulWidget, Table, TableState, Widget, Wrap};
use warren_operator::crd::StepPhase;

use super::model::{JobView, Key, MetricsState, Scope, Snapshot, Trends};

/// The smallest terminal the dashboard draws in.
pub const MIN_WIDTH: u16 = 80;
pub const MIN_HEIGHT: u16 = 12;
/// Width of a progress bar in the Jobs table.
pub const BAR_WIDTH: usize = 10;

/// What is drawn: the latest snapshot and what the samples before it tell.
#[derive(Clone, Debug)]
pub struct View {
    pub snapshot: Snapshot,
    pub trends: Trends,
}

/// One Event of the Job shown in detail.
#[derive(Clone, Debug, PartialEq)]
pub struct EventLine {
    /// `12s`, `3m`: how long ago.
    pub age: String,
    pub type_: String,
    pub reason: String,
    pub note: String,
}

/// The interactive state: selection, detail, prompt, last error.
#[derive(Clone, Debug, Default)]
pub struct Ui {
    /// Index of the selected Job.
    pub selected: usize,
    /// The Job drilled into.
    pub detail: Option<Key>,
    /// Its recent Events (`None`: not fetched yet).
    pub events: Option<Vec<EventLine>>,
    /// The namespace being typed after `n`.
    pub prompt: Option<String>,
    /// Why the last refresh failed (the view shows the one before).
    pub error: Option<String>,
}

/// Draws the interactive dashboard into a terminal frame.
pub fn draw(frame: &mut Frame, view: &View, ui: &Ui) {
    let area = frame.area();
    render(view, ui, true, area, frame.buffer_mut());
}

/// `warren top --once`: one frame, as tall as its content, as text with trailing blanks trimmed.
pub fn plain(view: &View, width: u16) -> String {
    let width = width.max(MIN_WIDTH);
    let s = &view.snapshot;
    let height = header_height(s) + table_height(s.pools.len()) + table_height(s.jobs.len()) + table_height(s.workflows.len());
    let area = Rect::new(0, 0, width, height.max(MIN_HEIGHT));
    let mut buf = Buffer::empty(area);
    render(view, &Ui::default(), false, area, &mut buf);
    let mut text = buffer_text(&buf);
    text.truncate(text.trim_end().len());
    text.push('\n');
    text
}

/// The lines of a buffer, trailing blanks trimmed.
pub fn buffer_text(buf: &Buffer) -> String {
    let area = buf.area;
    let mut out = String::new();
    for y in area.top()..area.bottom() {
        let line: String = (area.left()..area.right()).map(|x| buf[(x, y)].symbol()).collect();
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn header_height(s: &Snapshot) -> u16 {
    if notice(s).is_some() { 2 } else { 1 }
}

/// Borders and the column header around `rows` rows.
fn table_height(rows: usize) -> u16 {
    rows.min(1000) as u16 + 3
}

/// Draws `view` into `area`; `interactive` adds the selection and the key line.
pub fn render(view: &View, ui: &Ui, interactive: bool, area: Rect, buf: &mut Buffer) {
    if area.width < MIN_WIDTH || area.height < MIN_HEIGHT {
        let text = format!("terminal too small: need {MIN_WIDTH}x{MIN_HEIGHT} (have {}x{})", area.width, area.height);
        Paragraph::new(text).render(area, buf);
        return;
    }
    let s = &view.snapshot;
    let footer = u16::from(interactive);
    let [header, body, keys] =
        Layout::vertical([Constraint::Length(header_height(s)), Constraint::Min(0), Constraint::Length(footer)]).areas(area);
    render_header(s, header, buf);
    if interactive {
        render_footer(ui, keys, buf);
    }
    if let Some(job) = ui.detail.as_ref().and_then(|k| s.jobs.iter().find(|j| &j.key() == k)) {
        render_detail(job, view, ui, body, buf);
        return;
    }
    let (pools_h, workflows_h) = if interactive {
        (table_height(s.pools.len()).min(body.height / 3).max(3), table_height(s.workflows.len()).min(body.height / 4).max(3))
    } else {
        (table_height(s.pools.len()), table_height(s.workflows.len()))
    };
    let [pools, jobs, workflows] =
        Layout::vertical([Constraint::Length(pools_h), Constraint::Min(3), Constraint::Length(workflows_h)]).areas(body);
    render_pools(view, pools, buf);
    render_jobs(view, interactive.then_some(ui.selected), jobs, buf);
    render_workflows(s, workflows, buf);
}

/// Said when there is nothing to show, and why.
fn notice(s: &Snapshot) -> Option<String> {
    match &s.scope {
        Scope::Namespace(ns) if s.namespace_exists == Some(false) => Some(format!("namespace {ns:?} does not exist: nothing to show")),
        _ if s.is_empty() => Some(format!("no WorkerPools, Jobs or Workflows in {}", s.scope.label())),
        _ => None,
    }
}

fn render_header(s: &Snapshot, area: Rect, buf: &mut Buffer) {
    let metrics = match &s.metrics {
        MetricsState::Off => "metrics off".to_string(),
        MetricsState::Unreachable(why) => format!("metrics unreachable ({why})"),
        MetricsState::Sampled(_) => "metrics ok".to_string(),
    };
    let mut text = format!(
        "warren top · {} · {} pool(s) · {} Job(s) · {} Workflow(s) · {metrics}",
        s.scope.label(),
        s.pools.len(),
        s.jobs.len(),
        s.workflows.len()
    );
    if s.unreadable > 0 {
        text.push_str(&format!(" · {} unreadable object(s) skipped", s.unreadable));
    }
    let mut lines = vec![Line::from(Span::styled(text, Style::new().add_modifier(Modifier::BOLD)))];
    if let Some(notice) = notice(s) {
        lines.push(Line::from(Span::styled(notice, Style::new().fg(Color::Yellow))));
    }
    Paragraph::new(lines).render(area, buf);
}

fn render_footer(ui: &Ui, area: Rect, buf: &mut Buffer) {
    let line = if let Some(prompt) = &ui.prompt {
        Line::from(format!("namespace (empty: all, Enter: apply, Esc: cancel): {prompt}_"))
    } else if let Some(error) = &ui.error {
        Line::from(Span::styled(format!("API: {error} (showing the last view; retrying)"), Style::new().fg(Color::Red)))
    } else if ui.detail.is_some() {
        Line::from("Esc back · q quit")
    } else {
        Line::from("↑/↓ select · Enter details · n namespace · q quit")
    };
    Paragraph::new(line).render(area, buf);
}

fn block(title: &str) -> Block<'_> {
    Block::new().borders(Borders::ALL).title(Span::styled(title, Style::new().add_modifier(Modifier::BOLD)))
}

fn header_row(cells: &[&'static str]) -> Row<'static> {
    Row::new(cells.iter().map(|c| Cell::from(*c))).style(Style::new().add_modifier(Modifier::BOLD))
}

/// Width of a column: its widest cell (or header), at most `cap`.
fn fit<'a>(header: &str, cells: impl Iterator<Item = &'a str>, cap: u16) -> Constraint {
    let widest = cells.map(|c| c.chars().count()).chain([header.chars().count()]).max().unwrap_or(0);
    Constraint::Length((widest as u16).min(cap))
}

fn render_pools(view: &View, area: Rect, buf: &mut Buffer) {
    let s = &view.snapshot;
    let all = s.scope == Scope::All;
    let rows: Vec<Vec<String>> = s
        .pools
        .iter()
        .map(|p| {
            let trend = view.trends.pools.get(&p.key());
            let ready = match &p.ready {
                Some(c) if c.status == "True" => "True".to_string(),
                Some(c) => format!("{} {}", c.status, c.reason),
                None => "-".into(),
            };
            let backlog = p.backlog.iter().map(|(prio, n)| format!("{prio}={n}")).collect::<Vec<_>>().join(" ");
            let mut row = vec![
                p.name.clone(),
                ready,
                format!("{}/{}", p.replicas, p.desired),
                format!("{} ({backlog})", p.backlog_total()),
                p.in_flight.to_string(),
                rate(trend.and_then(|t| t.arrival)),
                rate(trend.and_then(|t| t.completion)),
                p.dead_letters.to_string(),
                sparkline(trend.map(|t| t.backlog.as_slice()).unwrap_or_default(), 24),
            ];
            if all {
                row.insert(0, p.namespace.clone());
            }
            row
        })
        .collect();
    let mut headers = vec!["POOL", "READY", "WORKERS", "BACKLOG", "IN FLIGHT", "IN/S", "OUT/S", "DLQ", "BACKLOG HISTORY"];
    if all {
        headers.insert(0, "NAMESPACE");
    }
    let caps = [32, 24, 9, 40, 9, 8, 8, 6, 24];
    let caps: Vec<u16> = if all { [32].into_iter().chain(caps).collect() } else { caps.to_vec() };
    let widths: Vec<Constraint> = headers
        .iter()
        .enumerate()
        .map(|(i, h)| if i + 1 == headers.len() { Constraint::Fill(1) } else { fit(h, rows.iter().map(|r| r[i].as_str()), caps[i]) })
        .collect();
    let table = Table::new(rows.into_iter().map(Row::new), widths).header(header_row(&headers)).block(block("WorkerPools"));
    Widget::render(table, area, buf);
}

fn phase_style(phase: &str, waiting: bool) -> Style {
    match phase {
        "Succeeded" => Style::new().fg(Color::Green),
        "Failed" => Style::new().fg(Color::Red),
        _ if waiting => Style::new().fg(Color::Yellow),
        "Running" | "Compensating" => Style::new().fg(Color::Cyan),
        _ => Style::new(),
    }
}

/// Why a Job is where it is: why it waits, or why it failed.
fn why(job: &JobView) -> String {
    if let Some(w) = &job.waiting {
        return w.clone();
    }
    if job.phase == "Failed"
        && let Some(c) = job.conditions.iter().find(|c| c.type_ == "Failed" && c.status == "True")
    {
        return if c.message.is_empty() { c.reason.clone() } else { format!("{}: {}", c.reason, c.message) };
    }
    job.notes.first().cloned().unwrap_or_default()
}

fn render_jobs(view: &View, selected: Option<usize>, area: Rect, buf: &mut Buffer) {
    let s = &view.snapshot;
    let all = s.scope == Scope::All;
    let cells: Vec<Vec<String>> = s
        .jobs
        .iter()
        .map(|j| {
            let trend = view.trends.jobs.get(&j.key());
            let mut row = vec![
                j.name.clone(),
                j.pool.clone(),
                j.phase.clone(),
                format!("{} {:>3}%", bar(j.percent, BAR_WIDTH), j.percent),
                format!("{}/{}", j.done(), j.total),
                rate(trend.and_then(|t| t.rate)),
                eta(trend.and_then(|t| t.eta)),
                j.retries.to_string(),
                j.dead_lettered.to_string(),
                why(j),
            ];
            if all {
                row.insert(0, j.namespace.clone());
            }
            row
        })
        .collect();
    let mut headers = vec!["JOB", "POOL", "PHASE", "PROGRESS", "DONE", "RATE", "ETA", "RETRIES", "DEAD", "WHY"];
    if all {
        headers.insert(0, "NAMESPACE");
    }
    let caps = [40, 24, 9, 15, 17, 8, 8, 7, 6, 0];
    let caps: Vec<u16> = if all { [32].into_iter().chain(caps).collect() } else { caps.to_vec() };
    let widths: Vec<Constraint> = headers
        .iter()
        .enumerate()
        .map(|(i, h)| if i + 1 == headers.len() { Constraint::Fill(1) } else { fit(h, cells.iter().map(|r| r[i].as_str()), caps[i]) })
        .collect();
    let phase_col = if all { 3 } else { 2 };
    let rows = cells.into_iter().zip(&s.jobs).map(|(cells, job)| {
        let style = phase_style(&job.phase, job.waiting.is_some());
        Row::new(cells.into_iter().enumerate().map(|(i, c)| if i == phase_col { Cell::from(c).style(style) } else { Cell::from(c) }))
    });
    let table = Table::new(rows, widths)
        .header(header_row(&headers))
        .block(block("Jobs"))
        .row_highlight_style(Style::new().add_modifier(Modifier::REVERSED));
    let mut state = TableState::default().with_selected(selected.map(|i| i.min(s.jobs.len().saturating_sub(1))));
    if s.jobs.is_empty() {
        state.select(None);
    }
    StatefulWidget::render(table, area, buf, &mut state);
}

fn step_mark(phase: StepPhase) -> &'static str {
    match phase {
        StepPhase::Pending => "·",
        StepPhase::Waiting => "?",
        StepPhase::Running => "▶",
        StepPhase::Succeeded => "✓",
        StepPhase::Failed => "✗",
        StepPhase::Skipped => "-",
        StepPhase::Cancelled => "⊘",
    }
}

fn render_workflows(s: &Snapshot, area: Rect, buf: &mut Buffer) {
    let all = s.scope == Scope::All;
    let cells: Vec<Vec<String>> = s
        .workflows
        .iter()
        .map(|w| {
            let steps = w.steps.iter().map(|st| format!("{}{}", step_mark(st.phase), st.name)).collect::<Vec<_>>().join(" ");
            let mut row = vec![w.name.clone(), w.phase.clone(), w.progress.clone(), steps];
            if all {
                row.insert(0, w.namespace.clone());
            }
            row
        })
        .collect();
    let mut headers =
        vec!["WORKFLOW", "PHASE", "STEPS", "STEP STATES (✓ succeeded ▶ running · pending ? approval ✗ failed - skipped ⊘ cancelled)"];
    if all {
        headers.insert(0, "NAMESPACE");
    }
    let caps = [40, 12, 7, 0];
    let caps: Vec<u16> = if all { [32].into_iter().chain(caps).collect() } else { caps.to_vec() };
    let widths: Vec<Constraint> = headers
        .iter()
        .enumerate()
        .map(|(i, h)| if i + 1 == headers.len() { Constraint::Fill(1) } else { fit(h, cells.iter().map(|r| r[i].as_str()), caps[i]) })
        .collect();
    let table = Table::new(cells.into_iter().map(Row::new), widths).header(header_row(&headers)).block(block("Workflows"));
    Widget::render(table, area, buf);
}

fn render_detail(job: &JobView, view: &View, ui: &Ui, area: Rect, buf: &mut Buffer) {
    let outer = Block::new()
        .borders(Borders::ALL)
        .title(Span::styled(format!(" wjob {}/{} ", job.namespace, job.name), Style::new().add_modifier(Modifier::BOLD)));
    let inner = outer.inner(area);
    outer.render(area, buf);
    let [summary, gauge, rest] = Layout::vertical([Constraint::Length(1), Constraint::Length(1), Constraint::Min(0)]).areas(inner);
    Paragraph::new(Line::from(vec![
        Span::styled(job.phase.clone(), phase_style(&job.phase, job.waiting.is_some())),
        Span::raw(format!(" · pool {} ({}) · {}/{} tasks done", job.pool, job.priority, job.done(), job.total)),
    ]))
    .render(summary, buf);
    Gauge::default()
        .gauge_style(Style::new().fg(Color::Cyan))
        .percent(u16::from(job.percent.min(100)))
        .label(format!("{}%", job.percent))
        .render(gauge, buf);
    let trend = view.trends.jobs.get(&job.key());
    let mut lines = vec![
        Line::from(format!(
            "succeeded {} · failed {} · running {} · queued {} · enqueued {} · retries {} · dead-lettered {} · cancelled {}",
            job.succeeded, job.failed, job.running, job.queued, job.enqueued, job.retries, job.dead_lettered, job.cancelled
        )),
        Line::from(format!("rate {} · ETA {}", rate(trend.and_then(|t| t.rate)), eta(trend.and_then(|t| t.eta)))),
    ];
    if let Some(w) = &job.waiting {
        lines.push(Line::from(Span::styled(format!("waiting: {w}"), Style::new().fg(Color::Yellow))));
    }
    if let Some(m) = &job.progress_message {
        lines.push(Line::from(format!("progress: {m}")));
    }
    lines.push(Line::from(format!("failed indexes: {}", if job.failed_indexes.is_empty() { "none" } else { &job.failed_indexes })));
    if !job.last_errors.is_empty() {
        lines.push(Line::from(Span::styled("last errors", Style::new().add_modifier(Modifier::BOLD))));
        for e in &job.last_errors {
            lines.push(Line::from(Span::styled(format!("  {e}"), Style::new().fg(Color::Red))));
        }
    }
    for note in &job.notes {
        lines.push(Line::from(Span::styled(note.clone(), Style::new().fg(Color::Red))));
    }
    lines.push(Line::from(Span::styled("conditions", Style::new().add_modifier(Modifier::BOLD))));
    if job.conditions.is_empty() {
        lines.push(Line::from("  none yet"));
    }
    for c in &job.conditions {
        lines.push(Line::from(format!(
            "  {}={} {}{}",
            c.type_,
            c.status,
            c.reason,
            if c.message.is_empty() { String::new() } else { format!(": {}", c.message) }
        )));
    }
    lines.push(Line::from(Span::styled("recent events", Style::new().add_modifier(Modifier::BOLD))));
    match &ui.events {
        None => lines.push(Line::from("  loading…")),
        Some(events) if events.is_empty() => lines.push(Line::from("  none")),
        Some(events) => {
            for e in events {
                let style = if e.type_ == "Warning" { Style::new().fg(Color::Red) } else { Style::new() };
                lines.push(Line::from(Span::styled(format!("  {:>5} {:<7} {} {}", e.age, e.type_, e.reason, e.note), style)));
            }
        }
    }
    Paragraph::new(lines).wrap(Wrap { trim: false }).render(rest, buf);
}

/// `█████░░░░░`: `percent` of `width` filled.
pub fn bar(percent: u8, width: usize) -> String {
    let filled = usize::from(percent.min(100)) * width / 100;
    format!("{}{}", "█".repeat(filled), "░".repeat(width - filled))
}

/// The last `width` values as block characters scaled to their maximum (`▁` is zero).
pub fn sparkline(values: &[u64], width: usize) -> String {
    const LEVELS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    let values = &values[values.len().saturating_sub(width)..];
    let max = values.iter().copied().max().unwrap_or(0);
    values
        .iter()
        .map(|&v| if v == 0 || max == 0 { LEVELS[0] } else { LEVELS[1 + ((v as u128 * 6 / max as u128) as usize).min(6)] })
        .collect()
}

/// `12/s`, `0.5/s`, `-` (not known yet).
pub fn rate(rate: Option<f64>) -> String {
    match rate {
        None => "-".into(),
        Some(r) if r < 10.0 => format!("{r:.1}/s"),
        Some(r) => format!("{r:.0}/s"),
    }
}

/// `45s`, `3m05s`, `2h10m`, `-` (not known).
pub fn eta(seconds: Option<f64>) -> String {
    let Some(s) = seconds.filter(|s| s.is_finite() && *s >= 0.0) else { return "-".into() };
    let s = s.ceil() as u64;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ if s < 100 * 3600 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d", s / 86400),
    }
}

#[cfg(test)]
mod tests {
    use ratatui::Terminal;
    use ratatui::backend::TestBackend;
    use warren_operator::crd::{Job, WorkerPool, Workflow};

    use super::super::model::{History, MetricsState, Scope, Snapshot};
    use super::*;

    fn pool(name: &str, status: serde_json::Value) -> WorkerPool {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "warren.dev/v1alpha1", "kind": "WorkerPool",
            "metadata": {"name": name, "namespace": "shop"},
            "spec": {"workers": {"handler": ["true"]}}, "status": status,
        }))
        .unwrap()
    }

    fn job(name: &str, completions: u32, status: serde_json::Value) -> Job {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "warren.dev/v1alpha1", "kind": "Job",
            "metadata": {"name": name, "namespace": "shop"},
            "spec": {"poolRef": "thumbs", "completions": completions}, "status": status,
        }))
        .unwrap()
    }

    /// A fixed state: a pool with a backlog, a Job at 50 %, one waiting for its pool, one done,
    /// a Workflow halfway; two samples a second apart (for rates).
    fn fixed_view() -> View {
        let pools = [pool(
            "thumbs",
            serde_json::json!({"replicas": 2, "readyReplicas": 2, "desiredReplicas": 4,
                "conditions": [{"type": "Ready", "status": "True", "reason": "Ready", "message": "", "lastTransitionTime": "2026-12-07T01:00:00Z"}],
                "autoscaling": {"backlog": 130, "backlogByPriority": [{"priority": "high", "ready": 30}, {"priority": "normal", "ready": 100}, {"priority": "low", "ready": 0}],
                "inFlight": 8, "arrivalRate": "25", "completionRate": "12.4"}}),
        )];
        let jobs = |half: u32| {
            vec![
                job(
                    "resize",
                    1000,
                    serde_json::json!({"phase": "Running", "total": 1000, "enqueued": 1000, "succeeded": half, "failed": 0, "running": 8, "retries": 3, "deadLettered": 0}),
                ),
                job(
                    "later",
                    10,
                    serde_json::json!({"phase": "Pending", "conditions": [{"type": "Ready", "status": "False", "reason": "PoolNotReady",
                    "message": "pool thumbs: QueueUnavailable", "lastTransitionTime": "2026-12-07T01:00:00Z"}]}),
                ),
                job(
                    "flaky",
                    10,
                    serde_json::json!({"phase": "Running", "total": 10, "enqueued": 10, "succeeded": 2, "failed": 1, "retries": 4, "deadLettered": 1,
                    "failedIndexes": "7", "recentAttempts": [{"index": 7, "attempt": 3, "outcome": "DeadLettered", "error": "exit 65: bad input\nline 2"}],
                    "waiting": {"reason": "ScalingUp", "message": "the pool is starting workers", "since": "2026-12-07T01:00:00Z"}}),
                ),
                job("done", 4, serde_json::json!({"phase": "Succeeded", "total": 4, "succeeded": 4})),
            ]
        };
        let workflows: Vec<Workflow> = vec![serde_json::from_value(serde_json::json!({
            "apiVersion": "warren.dev/v1alpha1", "kind": "Workflow", "metadata": {"name": "order", "namespace": "shop"},
            "spec": {"steps": [{"name": "charge", "job": {"poolRef": "thumbs"}}, {"name": "ship", "dependsOn": ["charge"], "job": {"poolRef": "thumbs"}}]},
            "status": {"phase": "Running", "progress": "1/2", "steps": {"charge": {"phase": "Succeeded"}, "ship": {"phase": "Running"}}},
        }))
        .unwrap()];
        let scope = Scope::Namespace("shop".into());
        let mut history = History::default();
        history.observe(&Snapshot::build(0.0, scope.clone(), &pools, &jobs(490), &workflows, MetricsState::Off));
        let snapshot = Snapshot::build(1.0, scope, &pools, &jobs(500), &workflows, MetricsState::Off);
        let trends = history.observe(&snapshot);
        View { snapshot, trends }
    }

    fn draw_on(view: &View, ui: &Ui, width: u16, height: u16) -> String {
        let mut terminal = Terminal::new(TestBackend::new(width, height)).unwrap();
        terminal.draw(|f| draw(f, view, ui)).unwrap();
        buffer_text(terminal.backend().buffer())
    }

    fn line_with<'a>(screen: &'a str, needle: &str) -> &'a str {
        screen.lines().find(|l| l.contains(needle)).unwrap_or_else(|| panic!("no line with {needle:?} in\n{screen}"))
    }

    #[test]
    fn the_dashboard_shows_pools_jobs_bars_and_why_jobs_wait() {
        let screen = draw_on(&fixed_view(), &Ui::default(), 160, 30);
        let pool = line_with(&screen, "thumbs");
        for says in ["True", "2/4", "130 (high=30 normal=100 low=0)", " 8 ", "25/s", "12/s"] {
            assert!(pool.contains(says), "{says:?} in the pool row: {pool}");
        }
        let resize = line_with(&screen, "resize");
        assert!(resize.contains("█████░░░░░  50%"), "a half-filled bar and its percentage: {resize}");
        assert!(resize.contains("500/1000") && resize.contains("Running"), "{resize}");
        assert!(resize.contains("10/s") && resize.contains("50s"), "rate from the two samples, ETA from it: {resize}");
        let later = line_with(&screen, "later");
        assert!(later.contains("░░░░░░░░░░   0%") && later.contains("PoolNotReady: pool thumbs: QueueUnavailable"), "{later}");
        assert!(line_with(&screen, "done ").contains("██████████ 100%"));
        let flaky = line_with(&screen, "flaky");
        for says in ["3/10", "███░░░░░░░  30%", " 4 ", " 1 ", "ScalingUp: the pool is starting workers"] {
            assert!(flaky.contains(says), "{says:?} (retries, dead letters, why) in {flaky}");
        }
        assert!(line_with(&screen, "order").contains("1/2") && line_with(&screen, "order").contains("✓charge ▶ship"));
        assert!(line_with(&screen, "warren top").contains("namespace shop · 1 pool(s) · 4 Job(s) · 1 Workflow(s) · metrics off"));
        assert!(screen.lines().last().unwrap().contains("q quit"), "the key line:\n{screen}");
    }

    #[test]
    fn enter_shows_the_job_detail_with_events() {
        let view = fixed_view();
        let ui = Ui {
            detail: Some(("shop".into(), "later".into())),
            events: Some(vec![EventLine {
                age: "12s".into(),
                type_: "Warning".into(),
                reason: "PoolNotReady".into(),
                note: "waiting for thumbs".into(),
            }]),
            ..Ui::default()
        };
        let screen = draw_on(&view, &ui, 120, 24);
        assert!(screen.contains("wjob shop/later"), "{screen}");
        assert!(screen.contains("waiting: PoolNotReady: pool thumbs: QueueUnavailable"), "{screen}");
        assert!(screen.contains("Ready=False PoolNotReady: pool thumbs: QueueUnavailable"), "{screen}");
        assert!(screen.contains("12s Warning PoolNotReady waiting for thumbs"), "{screen}");
        assert!(screen.contains("failed indexes: none"), "{screen}");
        assert!(screen.contains("Esc back"), "{screen}");

        let flaky = Ui { detail: Some(("shop".into(), "flaky".into())), events: Some(vec![]), ..Ui::default() };
        let screen = draw_on(&view, &flaky, 120, 24);
        assert!(screen.contains("failed indexes: 7"), "{screen}");
        assert!(screen.contains("last errors") && screen.contains("index 7 attempt 3 DeadLettered: exit 65: bad input"), "{screen}");
        assert!(screen.contains("30%") && screen.contains("retries 4 · dead-lettered 1"), "{screen}");
        assert!(screen.contains("recent events") && screen.contains("  none"), "{screen}");
    }

    #[test]
    fn a_terminal_too_small_gets_one_line() {
        let screen = draw_on(&fixed_view(), &Ui::default(), 40, 8);
        let lines: Vec<&str> = screen.lines().filter(|l| !l.is_empty()).collect();
        assert_eq!(lines, vec!["terminal too small: need 80x12 (have 40x"], "cut at the width, nothing else drawn");
        let screen = draw_on(&fixed_view(), &Ui::default(), 79, 40);
        assert_eq!(screen.trim_end(), "terminal too small: need 80x12 (have 79x40)");
    }

    #[test]
    fn the_once_frame_holds_every_row_and_no_key_line() {
        let text = plain(&fixed_view(), 140);
        for name in ["thumbs", "resize", "later", "flaky", "done", "order"] {
            assert!(text.contains(name), "{name} in\n{text}");
        }
        assert!(!text.contains("q quit"), "{text}");
        assert!(line_with(&text, "resize").contains("█████░░░░░  50%"));
    }

    #[test]
    fn an_unknown_or_empty_namespace_says_so() {
        let mut s = Snapshot::build(0.0, Scope::Namespace("nope".into()), &[], &[], &[], MetricsState::Off);
        s.namespace_exists = Some(false);
        let view = View { snapshot: s.clone(), trends: Default::default() };
        assert!(plain(&view, 100).contains("namespace \"nope\" does not exist: nothing to show"));
        s.namespace_exists = Some(true);
        let view = View { snapshot: s, trends: Default::default() };
        assert!(plain(&view, 100).contains("no WorkerPools, Jobs or Workflows in namespace nope"));
    }

    #[test]
    fn bars_sparklines_rates_and_etas_are_formatted() {
        for (percent, want) in [(0, "░░░░░░░░░░"), (50, "█████░░░░░"), (99, "█████████░"), (100, "██████████"), (200, "██████████")]
        {
            assert_eq!(bar(percent, 10), want, "{percent}%");
        }
        assert_eq!(sparkline(&[0, 1, 3, 6, 0], 10), "▁▃▅█▁");
        assert_eq!(sparkline(&[1, 100], 10), "▂█", "a small non-zero value still shows");
        assert_eq!(sparkline(&[5, 0, 0, 0], 2), "▁▁");
        assert_eq!(sparkline(&[], 4), "");
        for (r, want) in [(None, "-"), (Some(0.26), "0.3/s"), (Some(12.4), "12/s")] {
            assert_eq!(rate(r), want);
        }
        for (s, want) in [
            (None, "-"),
            (Some(0.0), "0s"),
            (Some(44.2), "45s"),
            (Some(185.0), "3m05s"),
            (Some(7800.0), "2h10m"),
            (Some(1e7), "115d"),
            (Some(f64::NAN), "-"),
        ] {
            assert_eq!(eta(s), want, "{s:?}");
        }
    }
}
