//! Plans as text: the human rendering in the Terraform manner (`+` create, `~` change,
//! `-` remove, a reason each, a summary line or `No changes.`) and the JSON rendering.
//!
//! In: a `Plan` and display options. Out: text. Pure.

use std::fmt::Write as _;

use serde_json::Value;

use crate::output::words::{plural, thousands};
use crate::plan::{Plan, SegmentAction, mask};

/// How to show a plan.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Examples shown per kind of change.
    pub show: usize,
    /// Mask emails and phone numbers (for plans posted to pull requests).
    pub mask: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            show: 3,
            mask: false,
        }
    }
}

fn value(v: &Option<Value>) -> String {
    match v {
        None => "(none)".into(),
        Some(Value::String(s)) => format!("{s:?}"),
        Some(other) => other.to_string(),
    }
}

/// The human rendering.
pub fn human(plan: &Plan, opts: Options) -> String {
    let key = |k: &str| if opts.mask { mask(k) } else { k.to_string() };
    let mut o = String::new();
    let _ = writeln!(
        o,
        "query   {}   {} in {:.1}s",
        plan.query,
        plural(plan.rows, "row", "rows"),
        plan.query_seconds
    );
    match &plan.last_run {
        Some((id, when)) => {
            let _ = writeln!(
                o,
                "state   last run #{id}, {when}, {}",
                plural(plan.state_profiles, "profile", "profiles")
            );
        }
        None => {
            let _ = writeln!(o, "state   no previous run: every profile is new to kdit");
        }
    }
    let _ = writeln!(o);
    let _ = writeln!(o, "Profiles");
    let samples = |keys: &[String], total: u64| -> String {
        if keys.is_empty() || opts.show == 0 {
            return String::new();
        }
        let shown: Vec<String> = keys.iter().take(opts.show).map(|k| key(k)).collect();
        let more = total.saturating_sub(shown.len() as u64);
        let tail = if more > 0 {
            ", … (--show N for more)"
        } else {
            ""
        };
        format!("   e.g. {}{tail}", shown.join(", "))
    };
    let width = [plan.creates, plan.updates, plan.rejected, plan.unchanged]
        .iter()
        .map(|n| thousands(*n).len())
        .max()
        .unwrap_or(1);
    if plan.creates > 0 {
        let _ = writeln!(
            o,
            "  + {:>width$} to create{}",
            thousands(plan.creates),
            samples(&plan.create_samples, plan.creates)
        );
    }
    if plan.updates > 0 {
        let _ = writeln!(o, "  ~ {:>width$} to update", thousands(plan.updates));
        for s in plan.update_samples.iter().take(opts.show) {
            let _ = writeln!(o, "      ~ {}", key(&s.key));
            let fw = s.changes.iter().map(|c| c.field.len()).max().unwrap_or(0);
            for c in &s.changes {
                let _ = writeln!(
                    o,
                    "          {:<fw$}  {} → {}",
                    c.field,
                    value(&c.old),
                    value(&c.new)
                );
            }
        }
        let shown = plan.update_samples.len().min(opts.show) as u64;
        if plan.updates > shown && shown > 0 {
            let _ = writeln!(o, "      … {} more", thousands(plan.updates - shown));
        }
    }
    if plan.rejected > 0 {
        let reasons: Vec<String> = plan
            .reject_counts
            .iter()
            .map(|r| format!("{} {} ({})", r.field, r.rule, thousands(r.count)))
            .collect();
        let _ = writeln!(
            o,
            "  ! {:>width$} rejected   {}   → --rejects FILE",
            thousands(plan.rejected),
            reasons.join(", ")
        );
    }
    let _ = writeln!(o, "    {:>width$} unchanged", thousands(plan.unchanged));
    if !plan.lists.is_empty() {
        let _ = writeln!(o);
        let _ = writeln!(o, "Lists");
        let lw = plan.lists.iter().map(|l| l.name.len()).max().unwrap_or(0);
        for l in &plan.lists {
            let sym = if !l.exists {
                "+"
            } else if l.adds > 0 || l.removes > 0 {
                "~"
            } else {
                " "
            };
            let mut parts = Vec::new();
            if !l.exists {
                parts.push("created".to_string());
            }
            if l.adds > 0 {
                parts.push(format!("+ {} add", thousands(l.adds)));
            }
            if l.removes > 0 {
                parts.push(format!(
                    "- {} remove (rows left the query)",
                    thousands(l.removes)
                ));
            }
            if parts.is_empty() {
                parts.push("no change".to_string());
            }
            let _ = writeln!(o, "  {sym} {:<lw$}   {}", l.name, parts.join(", "));
            if opts.show > 0 && l.removes > 0 {
                let shown: Vec<String> = l
                    .remove_samples
                    .iter()
                    .take(opts.show)
                    .map(|k| key(k))
                    .collect();
                let _ = writeln!(o, "      - e.g. {}", shown.join(", "));
            }
        }
    }
    audience(&mut o, plan);
    let _ = writeln!(o);
    if !plan.has_changes() {
        let _ = writeln!(
            o,
            "No changes. Klaviyo matches the query's {}.",
            plural(plan.rows - plan.rejected, "profile", "profiles")
        );
    } else {
        let e = plan.estimate();
        let adds: u64 = plan.lists.iter().map(|l| l.adds).sum();
        let removes: u64 = plan.lists.iter().map(|l| l.removes).sum();
        let changed_lists = plan
            .lists
            .iter()
            .filter(|l| l.adds > 0 || l.removes > 0)
            .count() as u64;
        let created = plan.lists.iter().filter(|l| !l.exists).count() as u64;
        let mut parts = vec![format!(
            "{} to write in {}",
            plural(plan.profile_writes(), "profile", "profiles"),
            plural(e.bulk_jobs, "bulk job", "bulk jobs")
        )];
        if changed_lists > 0 {
            parts.push(format!(
                "{} to change ({}, {})",
                plural(changed_lists, "list", "lists"),
                plural(adds, "add", "adds"),
                plural(removes, "removal", "removals")
            ));
        }
        if created > 0 {
            parts.push(format!("{} to create", plural(created, "list", "lists")));
        }
        let count =
            |a: SegmentAction| plan.segments.iter().filter(|s| s.action == a).count() as u64;
        let (seg_new, seg_changed) = (count(SegmentAction::Create), count(SegmentAction::Update));
        if seg_new > 0 {
            parts.push(format!(
                "{} to create",
                plural(seg_new, "segment", "segments")
            ));
        }
        if seg_changed > 0 {
            parts.push(format!(
                "{} to change",
                plural(seg_changed, "segment", "segments")
            ));
        }
        let tag_removes = plan.tags.iter().filter(|t| t.remove).count() as u64;
        let tag_adds = plan.tags.len() as u64 - tag_removes;
        if tag_adds > 0 {
            parts.push(format!("{} to add", plural(tag_adds, "tag", "tags")));
        }
        if tag_removes > 0 {
            parts.push(format!("{} to remove", plural(tag_removes, "tag", "tags")));
        }
        if !plan.dropped_segments.is_empty() {
            parts.push(format!(
                "{} no longer managed",
                plural(plan.dropped_segments.len() as u64, "segment", "segments")
            ));
        }
        if plan.subscribes > 0 {
            parts.push(format!(
                "{} to subscribe",
                plural(plan.subscribes, "profile", "profiles")
            ));
        }
        if plan.unsubscribes > 0 {
            parts.push(format!(
                "{} to unsubscribe",
                plural(plan.unsubscribes, "profile", "profiles")
            ));
        }
        if e.bulk_jobs == 0 && parts.len() > 1 {
            parts.remove(0);
        }
        let _ = writeln!(o, "Plan: {}.", parts.join(", "));
        let _ = writeln!(
            o,
            "Klaviyo calls: ~{} — about {:.0} s at Klaviyo's rate limits.",
            thousands(e.calls),
            e.seconds.max(1.0)
        );
    }
    if !plan.guards.is_empty() {
        let parts: Vec<String> = plan
            .guards
            .iter()
            .map(|g| {
                format!(
                    "{} {} ≤ {} of {} {}",
                    g.name,
                    thousands(g.value),
                    g.threshold,
                    thousands(g.of),
                    if g.ok { "✓" } else { "✗ STOP" }
                )
            })
            .collect();
        let _ = writeln!(o, "Guards: {}", parts.join("   "));
    }
    o
}

/// A tag group whose `exclusive` differs between the catalog and Klaviyo, explained.
pub fn conflict_text(c: &crate::plan::TagGroupConflict) -> String {
    let says = |b: bool| if b { "exclusive" } else { "not exclusive" };
    format!(
        "tag group \"{}\" is {} in the catalog but {} in Klaviyo; Klaviyo cannot change `exclusive` after a group is created, so kdit follows the catalog only for tags it adds (hint: make the catalog say `exclusive: {}`, or give the group a new name so kdit creates it as the catalog says)",
        c.group,
        says(c.catalog_exclusive),
        says(c.klaviyo_exclusive),
        c.klaviyo_exclusive
    )
}

/// The `Segments` and `Tags` sections.
fn audience(o: &mut String, plan: &Plan) {
    if !plan.segments.is_empty() || !plan.dropped_segments.is_empty() {
        let _ = writeln!(o);
        let _ = writeln!(o, "Segments");
        let w = plan
            .segments
            .iter()
            .map(|s| s.name.len())
            .chain(plan.dropped_segments.iter().map(String::len))
            .max()
            .unwrap_or(0);
        for s in &plan.segments {
            match s.action {
                SegmentAction::Create => {
                    let _ = writeln!(
                        o,
                        "  + {:<w$}   created ({})",
                        s.name,
                        plural(s.conditions as u64, "condition", "conditions")
                    );
                    for g in &s.after {
                        let _ = writeln!(o, "      + {g}");
                    }
                }
                SegmentAction::Update => {
                    let _ = writeln!(o, "  ~ {:<w$}   definition changed", s.name);
                    for g in s.before.iter().filter(|g| !s.after.contains(g)) {
                        let _ = writeln!(o, "      - {g}");
                    }
                    for g in s.after.iter().filter(|g| !s.before.contains(g)) {
                        let _ = writeln!(o, "      + {g}");
                    }
                }
                SegmentAction::None => {
                    let _ = writeln!(o, "    {:<w$}   no change", s.name);
                }
            }
        }
        for name in &plan.dropped_segments {
            let _ = writeln!(
                o,
                "  ! {name:<w$}   no longer declared by this job: left in Klaviyo (kdit never deletes segments), no longer managed after this run"
            );
        }
    }
    if plan.subscribes > 0 || plan.unsubscribes > 0 {
        let _ = writeln!(o);
        let _ = writeln!(o, "Consent");
        if plan.subscribes > 0 {
            let why = match &plan.consented_at {
                Some(col) => format!("historical import, consented_at from column `{col}`"),
                None => "the profiles this run creates".to_string(),
            };
            let _ = writeln!(
                o,
                "  + {} to subscribe to {} marketing ({why})",
                thousands(plan.subscribes),
                plan.consent.join(" and ")
            );
        }
        if plan.unsubscribes > 0 {
            let _ = writeln!(
                o,
                "  - {} to unsubscribe from {} marketing (rows where `{}` is true)",
                thousands(plan.unsubscribes),
                plan.unsubscribe.join(" and "),
                plan.unsubscribe_column.as_deref().unwrap_or("?")
            );
        }
    }
    if !plan.tags.is_empty() || !plan.tag_group_conflicts.is_empty() {
        let _ = writeln!(o);
        let _ = writeln!(o, "Tags");
        for c in &plan.tag_group_conflicts {
            let _ = writeln!(o, "  ! {}", conflict_text(c));
        }
        let w = plan.tags.iter().map(|t| t.tag.len()).max().unwrap_or(0);
        for t in &plan.tags {
            if t.remove {
                let _ = writeln!(
                    o,
                    "  - {:<w$}   off {} {:?} (no longer in the job)",
                    t.tag, t.on, t.target
                );
                continue;
            }
            let replaces = if t.replaces.is_empty() {
                String::new()
            } else {
                format!(
                    " (replaces {}: exclusive group)",
                    t.replaces
                        .iter()
                        .map(|r| format!("{r:?}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            };
            let _ = writeln!(
                o,
                "  + {:<w$}   on {} {:?}{replaces}",
                t.tag, t.on, t.target
            );
        }
    }
}

/// The JSON rendering (the same document `kdit plan -o` saves).
pub fn json(plan: &Plan, opts: Options) -> String {
    let mut p = plan.clone();
    if opts.mask {
        p.create_samples = p.create_samples.iter().map(|k| mask(k)).collect();
        for s in &mut p.update_samples {
            s.key = mask(&s.key);
        }
        for l in &mut p.lists {
            l.add_samples = l.add_samples.iter().map(|k| mask(k)).collect();
            l.remove_samples = l.remove_samples.iter().map(|k| mask(k)).collect();
        }
    }
    serde_json::to_string_pretty(&p).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{FieldChange, ListChange, UpdateSample};
    use serde_json::json;

    #[test]
    fn numbers_get_thousands_separators() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(1234), "1,234");
        assert_eq!(thousands(1234567), "1,234,567");
    }

    #[test]
    fn an_empty_plan_says_no_changes() {
        let plan = Plan {
            rows: 5,
            unchanged: 5,
            query: "q.sql".into(),
            last_run: Some((3, "2026-11-20 06:00 UTC".into())),
            state_profiles: 5,
            batch_size: 10000,
            ..Plan::default()
        };
        let text = human(&plan, Options::default());
        assert!(
            text.ends_with("No changes. Klaviyo matches the query's 5 profiles.\n"),
            "{text}"
        );
    }

    #[test]
    fn changes_render_with_symbols_and_a_summary() {
        let plan = Plan {
            query: "q.sql".into(),
            rows: 1200,
            creates: 1000,
            updates: 1,
            unchanged: 199,
            create_samples: vec!["ana@example.com".into()],
            update_samples: vec![UpdateSample {
                key: "bob@example.com".into(),
                changes: vec![FieldChange {
                    field: "first_name".into(),
                    old: Some(json!("Bob")),
                    new: Some(json!("Robert")),
                }],
            }],
            lists: vec![ListChange {
                name: "VIP".into(),
                mirror: true,
                exists: false,
                adds: 1000,
                removes: 2,
                add_samples: vec![],
                remove_samples: vec!["x@y.z".into()],
            }],
            batch_size: 10000,
            ..Plan::default()
        };
        let text = human(
            &plan,
            Options {
                show: 3,
                mask: true,
            },
        );
        assert!(
            text.contains("  + 1,000 to create   e.g. a**@example.com, … (--show N for more)\n"),
            "{text}"
        );
        assert!(
            text.contains("      ~ b**@example.com\n          first_name  \"Bob\" → \"Robert\"\n"),
            "{text}"
        );
        assert!(
            text.contains("  + VIP   created, + 1,000 add, - 2 remove (rows left the query)\n"),
            "{text}"
        );
        assert!(text.contains("Plan: 1,001 profiles to write in 1 bulk job, 1 list to change (1,000 adds, 2 removals), 1 list to create.\n"), "{text}");
    }
}
