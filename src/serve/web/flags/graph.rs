//! The dependency graph: each flag drawn right of the flags it requires, and the same as a
//! nested list.

use std::collections::BTreeMap;
use std::sync::Arc;

use askama::Template;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;

use super::FlagLink;
use crate::flag::FlagSet;
use crate::serve::Shared;
use crate::serve::web::{Chrome, page};

/// A flag placed in the graph: its column is its depth in the requires chain.
struct Node {
    link: FlagLink,
    label: String,
    enabled: bool,
    x: usize,
    y: usize,
}

struct Edge {
    x1: usize,
    y1: usize,
    x2: usize,
    y2: usize,
}

#[derive(Template)]
#[template(path = "graph.html")]
struct GraphPage {
    chrome: Option<Chrome>,
    nodes: Vec<Node>,
    edges: Vec<Edge>,
    width: usize,
    height: usize,
    /// The same graph as nested lists, each flag with the flags that require it under it, as
    /// steps the template writes in order (a tree needs no recursion in the template).
    nested: Vec<Step>,
}

const NODE_WIDTH: usize = 200;
const NODE_HEIGHT: usize = 32;
const COLUMN: usize = 260;
const ROW: usize = 48;
/// Longest name drawn in a box; the full name is the box's title and in the list.
const LABEL_CHARS: usize = 24;

pub(super) async fn graph(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    page(&shared, &headers, |store, chrome| {
        let flags = store.flags()?;
        Ok(graph_page(&flags, chrome))
    })
    .await
}

fn graph_page(flags: &FlagSet, chrome: Chrome) -> GraphPage {
    // Computed without recursion: a store edited by hand may hold a long chain or a cycle.
    let depth = flags.depths();
    let mut rows_used: Vec<usize> = Vec::new();
    let mut place: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    let mut nodes = Vec::new();
    for flag in flags.iter() {
        let column = depth.get(flag.name.as_str()).copied().unwrap_or(0);
        if rows_used.len() <= column {
            rows_used.resize(column + 1, 0);
        }
        let (x, y) = (10 + column * COLUMN, 10 + rows_used[column] * ROW);
        rows_used[column] += 1;
        place.insert(&flag.name, (x, y));
        let link = FlagLink::new(&flag.name);
        let label = if link.name.chars().count() > LABEL_CHARS {
            let short: String = link.name.chars().take(LABEL_CHARS - 1).collect();
            format!("{short}…")
        } else {
            link.name.clone()
        };
        nodes.push(Node {
            link,
            label,
            enabled: flag.enabled,
            x,
            y,
        });
    }
    let edges = flags
        .iter()
        .flat_map(|flag| flag.requires.iter().map(move |r| (r.as_str(), &flag.name)))
        .filter_map(|(required, dependent)| {
            let (from, to) = (place.get(required)?, place.get(dependent.as_str())?);
            Some(Edge {
                x1: from.0 + NODE_WIDTH,
                y1: from.1 + NODE_HEIGHT / 2,
                x2: to.0,
                y2: to.1 + NODE_HEIGHT / 2,
            })
        })
        .collect();
    let roots: Vec<&str> = flags
        .iter()
        .filter(|flag| flag.requires.is_empty())
        .map(|flag| flag.name.as_str())
        .collect();
    GraphPage {
        chrome: Some(chrome),
        width: 20 + rows_used.len().max(1) * COLUMN,
        height: 20 + rows_used.iter().max().copied().unwrap_or(1) * ROW,
        nodes,
        edges,
        nested: nest(flags, &roots),
    }
}

/// One step of the nested list as the template writes it: `Open` a list, an `Item` (its flag,
/// whether it is on, "(above)" when it was listed before, and whether a list of the flags
/// that require it follows), or `Close` a list (and the item holding it, when nested).
enum Step {
    Open,
    Item {
        link: FlagLink,
        on: bool,
        above: bool,
        opens: bool,
    },
    Close {
        item: bool,
    },
}

/// `roots` as a nested list, each flag with the flags that require it nested under it.
/// Without recursion, and each flag's dependents are listed once: a flag met again (several
/// flags require it) is shown with "(above)", so a graph of shared requirements stays
/// linear in size instead of unfolding into a tree.
fn nest(flags: &FlagSet, roots: &[&str]) -> Vec<Step> {
    if roots.is_empty() {
        return Vec::new();
    }
    let mut steps = vec![Step::Open];
    let mut listed: std::collections::HashSet<String> = std::collections::HashSet::new();
    // Each level: the names to list and how many of them are listed so far.
    let mut levels: Vec<(Vec<String>, usize)> =
        vec![(roots.iter().map(|r| r.to_string()).collect(), 0)];
    while let Some((names, next)) = levels.last_mut() {
        let Some(name) = names.get(*next).cloned() else {
            levels.pop();
            steps.push(Step::Close {
                item: !levels.is_empty(),
            });
            continue;
        };
        *next += 1;
        let dependents = flags.dependents_of(&name);
        let first_time = listed.insert(name.clone());
        let opens = first_time && !dependents.is_empty();
        steps.push(Step::Item {
            link: FlagLink::new(&name),
            on: flags.get(&name).is_some_and(|f| f.enabled),
            above: !first_time && !dependents.is_empty(),
            opens,
        });
        if opens {
            steps.push(Step::Open);
            levels.push((dependents, 0));
        }
    }
    steps
}
