//! The live view of `simgate top`: a ratatui screen (crossterm backend) redrawn every interval
//! from the same [`View`] the `--once` report prints.
//!
//! What it does: takes the first sample before touching the terminal (so an unreachable admin
//! API or a 401 exits with the plain message, the terminal untouched), then switches to the
//! alternate screen in raw mode, polls every interval and redraws; `q`, `Esc` or `Ctrl-C`
//! quits. The terminal is restored on every way out: on return, on error (a guard's `Drop`) and
//! on panic (`ratatui::try_init` installs a panic hook that restores it before the message).
//! A failed poll after the start is shown in the header and retried at the next interval.
//!
//! What it does not do: scroll, sort interactively, chart history, or take any action on simgate.

use std::time::Instant;

use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
use ratatui::layout::{Constraint, Direction, Layout};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Paragraph, Row as TableRow, Table};
use ratatui::Frame;

use super::view::{num, Counter, Row, View};
use super::{Options, TopError};

/// Restores the terminal when dropped (also when `run` returns early with an error).
struct Restore;

impl Drop for Restore {
    fn drop(&mut self) {
        ratatui::restore();
    }
}

pub(super) fn run(opts: &Options) -> Result<(), TopError> {
    use std::io::IsTerminal;
    if !std::io::stdout().is_terminal() {
        return Err(TopError::Terminal(std::io::Error::other(
            "standard output is not a terminal; use --once for a plain-text report",
        )));
    }
    let mut prev = opts.admin.sample()?;
    // Before `try_init`: a setup that fails half way (raw mode on, alternate screen refused) is
    // undone too.
    let _restore = Restore;
    let mut terminal = ratatui::try_init().map_err(TopError::Terminal)?;
    let mut view: Option<View> = None;
    let mut problem: Option<String> = None;
    loop {
        terminal
            .draw(|f| draw(f, opts, view.as_ref(), problem.as_deref()))
            .map_err(TopError::Terminal)?;
        let next = Instant::now() + opts.interval;
        loop {
            let left = next.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            if !event::poll(left).map_err(TopError::Terminal)? {
                continue;
            }
            match event::read().map_err(TopError::Terminal)? {
                Event::Key(k) if k.kind == KeyEventKind::Press => {
                    let ctrl_c =
                        k.code == KeyCode::Char('c') && k.modifiers.contains(KeyModifiers::CONTROL);
                    if matches!(k.code, KeyCode::Char('q') | KeyCode::Esc) || ctrl_c {
                        return Ok(());
                    }
                }
                Event::Resize(..) => {
                    terminal
                        .draw(|f| draw(f, opts, view.as_ref(), problem.as_deref()))
                        .map_err(TopError::Terminal)?;
                }
                _ => {}
            }
        }
        match opts.admin.sample() {
            Ok(cur) => {
                view = Some(View::new(&opts.admin.addr, &prev, &cur));
                prev = cur;
                problem = None;
            }
            Err(e) => problem = Some(e.to_string()),
        }
    }
}

fn draw(f: &mut Frame, opts: &Options, view: Option<&View>, problem: Option<&str>) {
    let rows = Layout::default()
        .direction(Direction::Vertical)
        .constraints([
            Constraint::Length(4),
            Constraint::Min(8),
            Constraint::Length(3 + super::view::TOP_SIMS as u16),
        ])
        .split(f.area());
    let bold = Style::default().add_modifier(Modifier::BOLD);
    let mut header = vec![Line::from(vec![
        Span::styled("simgate top ", bold),
        Span::raw(format!(
            "admin {}  every {:.1} s  (q quits)",
            opts.admin.addr,
            opts.interval.as_secs_f64()
        )),
    ])];
    if let Some(p) = problem {
        header.push(Line::styled(
            format!("poll failed: {p}"),
            Style::default().fg(Color::Red),
        ));
    }
    let Some(v) = view else {
        header.push(Line::raw("waiting for the second sample…"));
        f.render_widget(Paragraph::new(header), rows[0]);
        return;
    };
    let (ready_text, ready_colour) = if v.ready.ready {
        ("ready".to_owned(), Color::Green)
    } else {
        (
            format!("NOT READY: {}", v.ready.detail.replace('\n', "; ")),
            Color::Red,
        )
    };
    header.push(Line::from(vec![
        Span::raw("readiness "),
        Span::styled(ready_text, Style::default().fg(ready_colour)),
    ]));
    header.push(Line::raw(format!(
        "requests {}   mqtt publishes {} (up {}, down {})",
        rate(&v.requests),
        rate(&v.publishes),
        num(v.publishes_up.total),
        num(v.publishes_down.total)
    )));
    f.render_widget(Paragraph::new(header), rows[0]);

    let middle = Layout::default()
        .direction(Direction::Horizontal)
        .constraints([Constraint::Percentage(50), Constraint::Percentage(50)])
        .split(rows[1]);
    let c = &v.connections;
    let u = &v.upstream;
    let mut left = vec![
        Line::styled("device connections", bold),
        Line::raw(format!(
            "  open {}  mqtt session {}  mqtt aggregate {}  other {}",
            num(c.open),
            num(c.mqtt_session),
            num(c.mqtt_aggregate),
            num(c.other)
        )),
        Line::raw(format!(
            "  accepted {}  rejected {}",
            rate(&c.accepted),
            num(c.rejected.total)
        )),
        Line::styled("upstream", bold),
        Line::raw(format!(
            "  connects {}  failed {}  reused {}  retries {}",
            rate(&u.connects),
            num(u.connect_failures.total),
            num(u.reused.total),
            num(u.retries.total)
        )),
        Line::raw(format!(
            "  idle pooled {}  mqtt links up {} down {}",
            num(u.idle),
            num(u.links_up),
            num(u.links_down)
        )),
    ];
    rows_lines(&mut left, "http errors", &v.http_errors);
    rows_lines(&mut left, "mqtt errors", &v.mqtt_errors);
    f.render_widget(
        Paragraph::new(left).block(Block::default().borders(Borders::ALL).title("traffic")),
        middle[0],
    );
    let mut right = Vec::new();
    rows_lines(&mut right, "cloud responses (adapter status)", &v.cloud);
    right.push(Line::styled("probes", bold));
    if v.probes.is_empty() {
        right.push(Line::raw("  none"));
    }
    for p in &v.probes {
        let colour = match p.result.as_str() {
            "ok" => Color::Green,
            "pending" => Color::Yellow,
            _ => Color::Red,
        };
        right.push(Line::from(vec![
            Span::raw(format!("  {:<16} ", p.destination)),
            Span::styled(format!("{:<13}", p.result), Style::default().fg(colour)),
            Span::raw(format!(
                " {} {}",
                p.round_trip_ms
                    .map_or("-".into(), |ms| format!("{ms:.1} ms")),
                p.note.as_deref().unwrap_or("")
            )),
        ]));
    }
    f.render_widget(
        Paragraph::new(right).block(Block::default().borders(Borders::ALL).title("clouds")),
        middle[1],
    );

    let sims: Vec<TableRow> = v
        .top_sims
        .iter()
        .map(|s| {
            TableRow::new(vec![
                s.imsi.clone(),
                s.group.clone(),
                s.bytes().to_string(),
                s.up_bytes.to_string(),
                s.down_bytes.to_string(),
                s.up_msgs.to_string(),
                s.down_msgs.to_string(),
                s.errors.to_string(),
            ])
        })
        .collect();
    let widths = [
        Constraint::Length(17),
        Constraint::Length(14),
        Constraint::Length(12),
        Constraint::Length(12),
        Constraint::Length(12),
        Constraint::Length(9),
        Constraint::Length(9),
        Constraint::Length(7),
    ];
    let table = Table::new(sims, widths)
        .header(
            TableRow::new(vec![
                "imsi",
                "group",
                "bytes",
                "up bytes",
                "down bytes",
                "up msgs",
                "down msgs",
                "errors",
            ])
            .style(bold),
        )
        .block(
            Block::default()
                .borders(Borders::ALL)
                .title(format!("top SIMs by bytes ({} with usage)", v.sims)),
        );
    f.render_widget(table, rows[2]);
}

fn rate(c: &Counter) -> String {
    format!("{} ({:.2}/s)", num(c.total), c.per_s)
}

fn rows_lines(out: &mut Vec<Line<'static>>, title: &str, rows: &[Row]) {
    out.push(Line::styled(
        title.to_owned(),
        Style::default().add_modifier(Modifier::BOLD),
    ));
    if rows.is_empty() {
        out.push(Line::raw("  none"));
    }
    for r in rows {
        out.push(Line::raw(format!(
            "  {:<28} {}",
            r.labels.join(" "),
            rate(&r.counter)
        )));
    }
}
