//! The interactive loop of `warren top`: the terminal (raw mode and alternate screen, restored on
//! return, on error and on panic), the keys, and a poller task that looks at the API every
//! [`POLL_INTERVAL`] (at once when the namespace filter or the drilled-into Job changes).
//!
//! What a key does is the pure [`on_key`]; what is drawn is `render`; what is fetched is `fetch`.

use std::time::{Duration, Instant};

use kube::Client;
use ratatui::crossterm::event::{self, Event as TermEvent, KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use tokio::sync::{mpsc, watch};

use super::fetch::{self, MetricsUrl};
use super::model::{History, JobView, Key, Scope, Snapshot};
use super::render::{self, EventLine, Ui, View};

/// How often the API is listed: a look costs three LISTs (and one GET of the metrics).
pub const POLL_INTERVAL: Duration = Duration::from_millis(1500);

/// What a key asks of the loop.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    Nothing,
    Quit,
    /// The scope or the drilled-into Job changed: fetch again now.
    Refetch,
}

/// Applies one key to the state. `jobs` are the rows on screen (what the selection indexes).
pub fn on_key(ui: &mut Ui, scope: &mut Scope, jobs: &[JobView], key: KeyEvent) -> Action {
    if key.kind != KeyEventKind::Press {
        return Action::Nothing;
    }
    if key.modifiers.contains(KeyModifiers::CONTROL) && key.code == KeyCode::Char('c') {
        return Action::Quit;
    }
    if let Some(prompt) = ui.prompt.as_mut() {
        match key.code {
            KeyCode::Esc => ui.prompt = None,
            KeyCode::Backspace => {
                prompt.pop();
            }
            // A namespace is a DNS label: nothing else can match one.
            KeyCode::Char(c) if (c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-') && prompt.len() < 63 => prompt.push(c),
            KeyCode::Enter => {
                let typed = ui.prompt.take().unwrap_or_default();
                let wanted = if typed.is_empty() { Scope::All } else { Scope::Namespace(typed) };
                if wanted != *scope {
                    *scope = wanted;
                    ui.selected = 0;
                    ui.detail = None;
                    ui.events = None;
                    return Action::Refetch;
                }
            }
            _ => {}
        }
        return Action::Nothing;
    }
    if ui.detail.is_some() {
        return match key.code {
            KeyCode::Esc | KeyCode::Backspace | KeyCode::Left => {
                ui.detail = None;
                ui.events = None;
                Action::Refetch
            }
            KeyCode::Char('q') => Action::Quit,
            _ => Action::Nothing,
        };
    }
    let last = jobs.len().saturating_sub(1);
    match key.code {
        KeyCode::Char('q') | KeyCode::Esc => return Action::Quit,
        KeyCode::Up | KeyCode::Char('k') => ui.selected = ui.selected.saturating_sub(1),
        KeyCode::Down | KeyCode::Char('j') => ui.selected = (ui.selected + 1).min(last),
        KeyCode::PageUp => ui.selected = ui.selected.saturating_sub(10),
        KeyCode::PageDown => ui.selected = (ui.selected + 10).min(last),
        KeyCode::Home | KeyCode::Char('g') => ui.selected = 0,
        KeyCode::End | KeyCode::Char('G') => ui.selected = last,
        KeyCode::Enter | KeyCode::Right => {
            if let Some(job) = jobs.get(ui.selected.min(last)) {
                ui.detail = Some(job.key());
                ui.events = None;
                return Action::Refetch;
            }
        }
        KeyCode::Char('n') => {
            ui.prompt = Some(match scope {
                Scope::All => String::new(),
                Scope::Namespace(ns) => ns.clone(),
            });
        }
        _ => {}
    }
    Action::Nothing
}

/// What the poller asks for.
#[derive(Clone, Debug, PartialEq)]
struct Request {
    scope: Scope,
    detail: Option<Key>,
}

enum Update {
    Snapshot(Result<Snapshot, String>),
    Events(Key, Result<Vec<EventLine>, String>),
}

/// The first line of an error, for a one-line message.
pub fn one_line(error: &impl std::fmt::Display) -> String {
    error.to_string().lines().next().unwrap_or_default().to_string()
}

async fn poll(
    client: Client,
    metrics_url: Option<MetricsUrl>,
    clock: Instant,
    mut requests: watch::Receiver<Request>,
    updates: mpsc::Sender<Update>,
) {
    loop {
        // The look before the first poll was taken by the caller: wait first.
        tokio::select! {
            _ = tokio::time::sleep(POLL_INTERVAL) => {}
            changed = requests.changed() => if changed.is_err() { return },
        }
        let request = requests.borrow_and_update().clone();
        let at = clock.elapsed().as_secs_f64();
        let snapshot = fetch::snapshot(&client, &request.scope, metrics_url.as_ref(), at).await.map_err(|e| one_line(&e));
        if updates.send(Update::Snapshot(snapshot)).await.is_err() {
            return;
        }
        if let Some((ns, name)) = &request.detail {
            let events = fetch::job_events(&client, ns, name, jiff::Timestamp::now()).await.map_err(|e| one_line(&e));
            if updates.send(Update::Events((ns.clone(), name.clone()), events)).await.is_err() {
                return;
            }
        }
    }
}

/// Runs the dashboard until `q`; `first` is the look already taken (it proved the API answers).
/// Errors are the terminal's; the terminal is restored before this returns.
pub async fn run(client: Client, scope: Scope, metrics_url: Option<MetricsUrl>, clock: Instant, first: Snapshot) -> std::io::Result<()> {
    // try_init also installs a panic hook that restores the terminal before the panic prints.
    let mut terminal = match ratatui::try_init() {
        Ok(terminal) => terminal,
        Err(error) => {
            // Raw mode may be on already when entering the alternate screen failed.
            ratatui::restore();
            return Err(error);
        }
    };
    let result = event_loop(&mut terminal, client, scope, metrics_url, clock, first).await;
    ratatui::restore();
    result
}

async fn event_loop(
    terminal: &mut ratatui::DefaultTerminal,
    client: Client,
    mut scope: Scope,
    metrics_url: Option<MetricsUrl>,
    clock: Instant,
    first: Snapshot,
) -> std::io::Result<()> {
    let mut history = History::default();
    let trends = history.observe(&first);
    let mut view = View { snapshot: first, trends };
    let mut ui = Ui::default();

    let (request_tx, request_rx) = watch::channel(Request { scope: scope.clone(), detail: None });
    let (update_tx, mut updates) = mpsc::channel(4);
    let poller = tokio::spawn(poll(client, metrics_url, clock, request_rx, update_tx));
    // crossterm's read blocks: a thread of its own forwards the terminal's events. It ends with
    // the process (it cannot be woken from the read).
    let (key_tx, mut keys) = mpsc::unbounded_channel();
    std::thread::spawn(move || {
        while let Ok(event) = event::read() {
            if key_tx.send(event).is_err() {
                break;
            }
        }
    });
    let result = loop {
        if let Err(e) = terminal.draw(|frame| render::draw(frame, &view, &ui)) {
            break Err(e);
        }
        tokio::select! {
            event = keys.recv() => match event {
                Some(TermEvent::Key(key)) => match on_key(&mut ui, &mut scope, &view.snapshot.jobs, key) {
                    Action::Quit => break Ok(()),
                    Action::Refetch => {
                        let _ = request_tx.send(Request { scope: scope.clone(), detail: ui.detail.clone() });
                    }
                    Action::Nothing => {}
                },
                Some(_) => {} // resize and others: redraw
                None => break Ok(()),
            },
            update = updates.recv() => match update {
                Some(Update::Snapshot(Ok(snapshot))) => {
                    // A look taken before the filter changed is not shown.
                    if snapshot.scope == scope {
                        view.trends = history.observe(&snapshot);
                        view.snapshot = snapshot;
                        ui.error = None;
                        ui.selected = ui.selected.min(view.snapshot.jobs.len().saturating_sub(1));
                        // The Job shown in detail was deleted: back to the dashboard.
                        if ui.detail.as_ref().is_some_and(|k| !view.snapshot.jobs.iter().any(|j| &j.key() == k)) {
                            ui.detail = None;
                            ui.events = None;
                            let _ = request_tx.send(Request { scope: scope.clone(), detail: None });
                        }
                    }
                }
                Some(Update::Snapshot(Err(error))) => ui.error = Some(error),
                Some(Update::Events(key, events)) => {
                    if ui.detail.as_ref() == Some(&key) {
                        match events {
                            Ok(events) => ui.events = Some(events),
                            Err(error) => ui.error = Some(format!("events: {error}")),
                        }
                    }
                }
                None => break Ok(()),
            },
        }
    };
    poller.abort();
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn press(code: KeyCode) -> KeyEvent {
        KeyEvent::new(code, KeyModifiers::NONE)
    }

    fn jobs(names: &[&str]) -> Vec<JobView> {
        names.iter().map(|n| JobView { namespace: "ns".into(), name: n.to_string(), ..JobView::default() }).collect()
    }

    #[test]
    fn keys_move_the_selection_and_drill_into_a_job() {
        let (mut ui, mut scope, jobs) = (Ui::default(), Scope::All, jobs(&["a", "b", "c"]));
        let mut key = |ui: &mut Ui, code| on_key(ui, &mut scope, &jobs, press(code));
        for (code, selected) in
            [(KeyCode::Down, 1), (KeyCode::Char('j'), 2), (KeyCode::Down, 2), (KeyCode::Up, 1), (KeyCode::Home, 0), (KeyCode::End, 2)]
        {
            assert_eq!(key(&mut ui, code), Action::Nothing);
            assert_eq!(ui.selected, selected, "after {code:?}");
        }
        assert_eq!(key(&mut ui, KeyCode::Enter), Action::Refetch);
        assert_eq!(ui.detail, Some(("ns".into(), "c".into())));
        assert_eq!(key(&mut ui, KeyCode::Esc), Action::Refetch, "Esc leaves the detail first");
        assert_eq!(ui.detail, None);
        assert_eq!(key(&mut ui, KeyCode::Esc), Action::Quit);
        assert_eq!(key(&mut ui, KeyCode::Char('q')), Action::Quit);
        assert_eq!(on_key(&mut ui, &mut Scope::All, &[], KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL)), Action::Quit);
        assert_eq!(on_key(&mut Ui::default(), &mut Scope::All, &[], press(KeyCode::Enter)), Action::Nothing, "no Job to open");
    }

    #[test]
    fn n_filters_by_a_typed_namespace() {
        let (mut ui, mut scope) = (Ui::default(), Scope::All);
        let key = |ui: &mut Ui, scope: &mut Scope, code| on_key(ui, scope, &[], press(code));
        assert_eq!(key(&mut ui, &mut scope, KeyCode::Char('n')), Action::Nothing);
        for c in "Shop_1!".chars() {
            key(&mut ui, &mut scope, KeyCode::Char(c));
        }
        assert_eq!(ui.prompt.as_deref(), Some("hop1"), "only what a namespace name can hold");
        key(&mut ui, &mut scope, KeyCode::Backspace);
        assert_eq!(key(&mut ui, &mut scope, KeyCode::Char('q')), Action::Nothing, "q is typed, not quit");
        assert_eq!(key(&mut ui, &mut scope, KeyCode::Enter), Action::Refetch);
        assert_eq!((scope.clone(), ui.prompt.clone()), (Scope::Namespace("hopq".into()), None));
        // Emptied, it shows every namespace again; Esc cancels.
        key(&mut ui, &mut scope, KeyCode::Char('n'));
        for _ in 0..4 {
            key(&mut ui, &mut scope, KeyCode::Backspace);
        }
        assert_eq!(key(&mut ui, &mut scope, KeyCode::Enter), Action::Refetch);
        assert_eq!(scope, Scope::All);
        key(&mut ui, &mut scope, KeyCode::Char('n'));
        key(&mut ui, &mut scope, KeyCode::Char('x'));
        assert_eq!(key(&mut ui, &mut scope, KeyCode::Esc), Action::Nothing);
        assert_eq!((scope, ui.prompt), (Scope::All, None));
    }
}
