//! The idempotent ingest's decisions about a device's batch: whether it is well formed, the order
//! that applies every parent before the children that name it (whatever order the device listed
//! them in), and which database errors a retry can help. Applying the operations is SQL
//! (`sql/ingest.sql`); nothing here touches a database.

use serde_json::{Map, Value};
use std::collections::{BTreeMap, HashMap};

/// More operations than this in one batch are refused: the batch is one transaction with a
/// subtransaction per operation, and a device with more to send splits it.
pub const MAX_BATCH_OPERATIONS: usize = 1_000;

/// For each registered table (by the name devices use), its foreign-key columns and the
/// registered table each one references.
pub type TableLinks = BTreeMap<String, BTreeMap<String, String>>;

/// A batch that cannot be applied at all: nothing of it is applied.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    #[error("the batch must be a JSON array of operations, not {0}")]
    NotAnArray(&'static str),
    #[error("the batch has {0} operations; at most {MAX_BATCH_OPERATIONS} are taken at once")]
    TooLarge(usize),
    #[error("the operation at index {position} of the batch is not a JSON object")]
    NotAnObject { position: usize },
    #[error("the operation at index {position} of the batch has no op_id (a non-empty string)")]
    NoOpId { position: usize },
    #[error("op_id {0:?} appears more than once in the batch")]
    RepeatedOpId(String),
}

/// Why one operation cannot be applied, whatever the database holds: it fails for good (a retry
/// sends the same operation), and the rest of the batch goes on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OperationProblem {
    #[error("table {0:?} is not registered for ingest")]
    UnknownTable(String),
    #[error("action must be \"upsert\" or \"delete\"")]
    BadAction,
    #[error("local_id must be a non-empty string or an integer")]
    NoLocalId,
    #[error("data must be a JSON object")]
    DataNotAnObject,
    #[error("it, or a parent it needs from this batch, is on a cycle of parents in this batch")]
    Cycle,
}

/// One operation in the order it is to be applied: its place in the batch (from 0) and, when it
/// cannot be applied, why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub position: usize,
    pub problem: Option<OperationProblem>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Upsert,
    Delete,
}

struct Operation<'a> {
    table: &'a str,
    local_id: String,
    action: Action,
    data: Option<&'a Map<String, Value>>,
}

/// A local id as the device sent it: a non-empty string, or an integer of 64 bits written as
/// text (as SQL's `->>` writes it; `sql/ingest.sql` applies the same rule to foreign keys).
pub fn local_id_text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) if n.is_i64() || n.is_u64() => Some(n.to_string()),
        _ => None,
    }
}

/// The order in which the batch's operations are applied. Upserts come first, each after the
/// upserts in the batch of the parents its data names and after earlier upserts of its own row;
/// deletes follow, rows of referencing tables before the rows they reference. Otherwise the
/// batch's own order is kept.
pub fn order(batch: &Value, links: &TableLinks) -> Result<Vec<Step>, BatchError> {
    let items = match batch {
        Value::Array(items) => items,
        other => return Err(BatchError::NotAnArray(json_kind(other))),
    };
    if items.len() > MAX_BATCH_OPERATIONS {
        return Err(BatchError::TooLarge(items.len()));
    }
    let mut seen_op_ids = HashMap::with_capacity(items.len());
    let mut parsed = Vec::with_capacity(items.len());
    for (position, item) in items.iter().enumerate() {
        let object = item.as_object().ok_or(BatchError::NotAnObject { position })?;
        let op_id = match object.get("op_id") {
            Some(Value::String(id)) if !id.is_empty() => id,
            _ => return Err(BatchError::NoOpId { position }),
        };
        if seen_op_ids.insert(op_id.as_str(), position).is_some() {
            return Err(BatchError::RepeatedOpId(op_id.clone()));
        }
        parsed.push(operation(object, links));
    }

    let mut problems: Vec<Option<OperationProblem>> =
        parsed.iter().map(|p| p.as_ref().err().cloned()).collect();
    let parents = in_batch_parents(&parsed, links);
    let depth = upsert_depths(&parents, &mut problems);
    let table_depth = table_depths(links);
    let deepest = table_depth.values().copied().max().unwrap_or(0);

    let mut keyed: Vec<(u8, usize, usize)> = parsed
        .iter()
        .enumerate()
        .map(|(position, op)| match op {
            Ok(op) if op.action == Action::Delete && problems[position].is_none() => {
                // Deeper tables reference shallower ones: their rows go first.
                (1, deepest - table_depth.get(op.table).copied().unwrap_or(0), position)
            }
            _ => (0, depth[position], position),
        })
        .collect();
    keyed.sort_unstable();
    Ok(keyed
        .into_iter()
        .map(|(_, _, position)| Step { position, problem: problems[position].take() })
        .collect())
}

fn operation<'a>(object: &'a Map<String, Value>, links: &TableLinks) -> Result<Operation<'a>, OperationProblem> {
    let table = object.get("table").and_then(Value::as_str).unwrap_or_default();
    if !links.contains_key(table) {
        return Err(OperationProblem::UnknownTable(table.to_string()));
    }
    let action = match object.get("action").and_then(Value::as_str) {
        Some("upsert") => Action::Upsert,
        Some("delete") => Action::Delete,
        _ => return Err(OperationProblem::BadAction),
    };
    let local_id = object.get("local_id").and_then(local_id_text).ok_or(OperationProblem::NoLocalId)?;
    let data = match (action, object.get("data")) {
        (Action::Upsert, Some(Value::Object(data))) => Some(data),
        (Action::Delete, None | Some(Value::Null)) => None,
        (Action::Delete, Some(Value::Object(data))) => Some(data),
        _ => return Err(OperationProblem::DataNotAnObject),
    };
    Ok(Operation { table, local_id, action, data })
}

/// For each upsert, the upserts of the batch that must be applied before it: the first upsert of
/// each parent row its data names, and the previous upsert of its own row.
fn in_batch_parents(parsed: &[Result<Operation, OperationProblem>], links: &TableLinks) -> Vec<Vec<usize>> {
    let mut first_upsert: HashMap<(&str, &str), usize> = HashMap::new();
    let mut previous_of_row: Vec<Option<usize>> = vec![None; parsed.len()];
    let mut last_upsert: HashMap<(&str, &str), usize> = HashMap::new();
    for (position, op) in parsed.iter().enumerate() {
        if let Ok(op) = op {
            if op.action == Action::Upsert {
                let row = (op.table, op.local_id.as_str());
                first_upsert.entry(row).or_insert(position);
                previous_of_row[position] = last_upsert.insert(row, position);
            }
        }
    }
    parsed
        .iter()
        .enumerate()
        .map(|(position, op)| {
            let Ok(op) = op else { return Vec::new() };
            if op.action != Action::Upsert {
                return Vec::new();
            }
            let mut before: Vec<usize> = previous_of_row[position].into_iter().collect();
            let data = op.data.expect("an upsert has data");
            for (column, parent_table) in &links[op.table] {
                let Some(parent_local) = data.get(column).and_then(local_id_text) else { continue };
                if let Some(&parent) = first_upsert.get(&(parent_table.as_str(), parent_local.as_str())) {
                    if parent != position {
                        before.push(parent);
                    }
                }
            }
            before
        })
        .collect()
}

/// How many in-batch parents each upsert waits for on its longest chain. Upserts on a cycle of
/// parents (a strongly connected group), and those that need one of them, get the problem
/// `Cycle` (depth 0: they fail where they stand).
fn upsert_depths(parents: &[Vec<usize>], problems: &mut [Option<OperationProblem>]) -> Vec<usize> {
    let order = finish_order(parents);
    let on_cycle = on_cycles(parents, &order);
    let mut depth = vec![0usize; parents.len()];
    // In finish order every parent off a cycle comes before the operations that need it.
    for &node in &order {
        if on_cycle[node] || parents[node].iter().any(|&p| on_cycle[p] || problems[p].is_some()) {
            problems[node] = Some(OperationProblem::Cycle);
            continue;
        }
        depth[node] = parents[node].iter().map(|&p| depth[p] + 1).max().unwrap_or(0);
    }
    depth
}

/// Every node, each after all it reaches (a depth-first post-order over the parent edges),
/// without recursion: a device's chain of parents may be long.
fn finish_order(parents: &[Vec<usize>]) -> Vec<usize> {
    let mut seen = vec![false; parents.len()];
    let mut order = Vec::with_capacity(parents.len());
    for start in 0..parents.len() {
        if seen[start] {
            continue;
        }
        seen[start] = true;
        let mut stack = vec![(start, 0usize)];
        while let Some(&mut (node, ref mut next)) = stack.last_mut() {
            if let Some(&parent) = parents[node].get(*next) {
                *next += 1;
                if !seen[parent] {
                    seen[parent] = true;
                    stack.push((parent, 0));
                }
            } else {
                order.push(node);
                stack.pop();
            }
        }
    }
    order
}

/// Whether each node is on a cycle: in a strongly connected group of more than one (Kosaraju's
/// second pass, over the child edges in reverse finish order).
fn on_cycles(parents: &[Vec<usize>], order: &[usize]) -> Vec<bool> {
    let mut children = vec![Vec::new(); parents.len()];
    for (child, of) in parents.iter().enumerate() {
        for &parent in of {
            children[parent].push(child);
        }
    }
    let mut group = vec![usize::MAX; parents.len()];
    let mut sizes = Vec::new();
    for &root in order.iter().rev() {
        if group[root] != usize::MAX {
            continue;
        }
        let id = sizes.len();
        sizes.push(0usize);
        group[root] = id;
        let mut stack = vec![root];
        while let Some(node) = stack.pop() {
            sizes[id] += 1;
            for &child in &children[node] {
                if group[child] == usize::MAX {
                    group[child] = id;
                    stack.push(child);
                }
            }
        }
    }
    group.iter().map(|&g| sizes[g] > 1).collect()
}

/// Each registered table's depth among the registered tables: 0 for one that references no
/// other, one more than its deepest parent otherwise (a reference to itself, or a cycle of
/// tables, adds nothing).
fn table_depths(links: &TableLinks) -> HashMap<&str, usize> {
    fn visit<'a>(table: &'a str, links: &'a TableLinks, open: &mut Vec<&'a str>, depths: &mut HashMap<&'a str, usize>) -> usize {
        if let Some(&d) = depths.get(table) {
            return d;
        }
        if open.contains(&table) {
            return 0;
        }
        open.push(table);
        let d = links
            .get(table)
            .into_iter()
            .flat_map(|columns| columns.values())
            .filter(|parent| parent.as_str() != table && links.contains_key(parent.as_str()))
            .map(|parent| visit(parent, links, open, depths) + 1)
            .max()
            .unwrap_or(0);
        open.pop();
        depths.insert(table, d);
        d
    }
    let mut depths = HashMap::new();
    for table in links.keys() {
        visit(table, links, &mut Vec::new(), &mut depths);
    }
    depths
}

/// Whether an operation that failed with this SQLSTATE may succeed if sent again unchanged: a
/// serialization failure or deadlock, a lock not available, a lack of resources, a connection
/// (of a foreign table's server). Everything else (bad data, a constraint, a missing privilege)
/// fails the same way every time. A cancel or a statement timeout is not an operation's failure:
/// it ends the whole call.
pub fn is_retryable(sqlstate: &str) -> bool {
    const CLASSES: [&str; 3] = ["40", "53", "08"];
    sqlstate == "55P03" || sqlstate == PARENT_NOT_SYNCED || CLASSES.iter().any(|class| sqlstate.starts_with(class))
}

/// The SQLSTATE of an operation whose parent the device has not sent yet: a retry after the
/// parent's batch succeeds.
pub const PARENT_NOT_SYNCED: &str = "FS001";

fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// customers <- sales <- swaps, and products <- swaps: the seed's levels.
    fn links() -> TableLinks {
        let mut links = TableLinks::new();
        links.insert("customers".into(), BTreeMap::new());
        links.insert("products".into(), BTreeMap::new());
        links.insert("sales".into(), BTreeMap::from([("customer_id".into(), "customers".into())]));
        links.insert(
            "swaps".into(),
            BTreeMap::from([("sale_id".into(), "sales".into()), ("product_id".into(), "products".into())]),
        );
        links.insert("categories".into(), BTreeMap::from([("parent_id".into(), "categories".into())]));
        links.insert(
            "pairs".into(),
            BTreeMap::from([("left_id".into(), "pairs".into()), ("right_id".into(), "pairs".into())]),
        );
        links
    }

    fn upsert(op: &str, table: &str, local: &str, data: Value) -> Value {
        json!({"op_id": op, "table": table, "local_id": local, "action": "upsert", "data": data})
    }

    fn delete(op: &str, table: &str, local: &str) -> Value {
        json!({"op_id": op, "table": table, "local_id": local, "action": "delete"})
    }

    fn positions(batch: &Value) -> Vec<usize> {
        order(batch, &links()).unwrap().iter().map(|s| s.position).collect()
    }

    #[test]
    fn a_child_listed_before_its_parents_is_applied_after_them() {
        let batch = json!([
            upsert("1", "swaps", "w1", json!({"sale_id": "s1", "product_id": "p1"})),
            upsert("2", "sales", "s1", json!({"customer_id": "c1"})),
            upsert("3", "customers", "c1", json!({})),
            upsert("4", "products", "p1", json!({})),
        ]);
        assert_eq!(positions(&batch), vec![2, 3, 1, 0]);
    }

    #[test]
    fn without_dependencies_the_batch_order_is_kept() {
        let batch = json!([
            upsert("1", "customers", "c2", json!({})),
            upsert("2", "customers", "c1", json!({})),
            upsert("3", "sales", "s9", json!({"customer_id": "c-from-an-earlier-batch"})),
        ]);
        assert_eq!(positions(&batch), vec![0, 1, 2]);
    }

    #[test]
    fn a_parent_named_by_a_number_is_found_by_its_text() {
        let batch = json!([upsert("1", "sales", "s1", json!({"customer_id": 17})), json!({"op_id": "2", "table": "customers", "local_id": 17, "action": "upsert", "data": {}})]);
        assert_eq!(positions(&batch), vec![1, 0]);
    }

    #[test]
    fn two_upserts_of_one_row_keep_their_order_even_when_the_later_has_no_parent() {
        let batch = json!([
            upsert("1", "sales", "s1", json!({"customer_id": "c1"})),
            upsert("2", "customers", "c1", json!({})),
            upsert("3", "sales", "s1", json!({"total": 5})),
        ]);
        assert_eq!(positions(&batch), vec![1, 0, 2]);
    }

    #[test]
    fn deletes_follow_upserts_children_tables_first() {
        let batch = json!([
            delete("1", "customers", "c1"),
            delete("2", "swaps", "w1"),
            upsert("3", "products", "p1", json!({})),
            delete("4", "sales", "s1"),
        ]);
        assert_eq!(positions(&batch), vec![2, 1, 3, 0]);
    }

    #[test]
    fn a_row_of_a_self_referencing_table_follows_its_parent_row() {
        let batch = json!([
            upsert("1", "categories", "child", json!({"parent_id": "root"})),
            upsert("2", "categories", "root", json!({"parent_id": null})),
            upsert("3", "categories", "self", json!({"parent_id": "self"})),
        ]);
        assert_eq!(positions(&batch), vec![1, 2, 0]);
    }

    fn failed_on_cycles(batch: &Value) -> Vec<usize> {
        let mut failed: Vec<usize> = order(batch, &links())
            .unwrap()
            .iter()
            .filter(|s| s.problem == Some(OperationProblem::Cycle))
            .map(|s| s.position)
            .collect();
        failed.sort_unstable();
        failed
    }

    #[test]
    fn a_cycle_fails_its_members_and_what_needs_them_and_nothing_else() {
        let batch = json!([
            upsert("1", "categories", "a", json!({"parent_id": "b"})),
            upsert("2", "categories", "b", json!({"parent_id": "a"})),
            upsert("3", "categories", "c", json!({"parent_id": "a"})),
            upsert("4", "customers", "c1", json!({})),
            upsert("5", "categories", "d", json!({"parent_id": "x"})),
        ]);
        assert_eq!(failed_on_cycles(&batch), vec![0, 1, 2]);
    }

    #[test]
    fn every_member_of_a_tangled_cycle_is_found() {
        // A needs B, B needs C and D, C needs A, D needs C: one strongly connected group.
        let batch = json!([
            upsert("a", "pairs", "A", json!({"left_id": "B"})),
            upsert("b", "pairs", "B", json!({"left_id": "C", "right_id": "D"})),
            upsert("c", "pairs", "C", json!({"left_id": "A"})),
            upsert("d", "pairs", "D", json!({"left_id": "C"})),
            upsert("e", "pairs", "E", json!({"left_id": "F", "right_id": "G"})),
            upsert("f", "pairs", "F", json!({"right_id": "G"})),
            upsert("g", "pairs", "G", json!({})),
        ]);
        assert_eq!(failed_on_cycles(&batch), vec![0, 1, 2, 3]);
        let order = positions(&batch);
        let place = |p: usize| order.iter().position(|&x| x == p).unwrap();
        assert!(place(6) < place(5) && place(5) < place(4), "G before F before E: {order:?}");
    }

    #[test]
    fn a_long_chain_is_ordered_without_recursion() {
        let n = MAX_BATCH_OPERATIONS;
        let batch: Vec<Value> = (0..n)
            .rev()
            .map(|i| {
                let parent = if i == 0 { Value::Null } else { json!(format!("k{}", i - 1)) };
                upsert(&i.to_string(), "categories", &format!("k{i}"), json!({"parent_id": parent}))
            })
            .collect();
        let order = positions(&Value::Array(batch));
        assert_eq!(order, (0..n).rev().collect::<Vec<_>>());
    }

    #[test]
    fn operations_that_cannot_apply_say_why_and_keep_their_place() {
        let batch = json!([
            upsert("1", "nope", "x", json!({})),
            {"op_id": "2", "table": "customers", "local_id": "c1", "action": "merge", "data": {}},
            {"op_id": "3", "table": "customers", "local_id": "", "action": "upsert", "data": {}},
            {"op_id": "4", "table": "customers", "local_id": "c1", "action": "upsert", "data": [1]},
            delete("5", "customers", "c1"),
        ]);
        let steps = order(&batch, &links()).unwrap();
        let problems: Vec<Option<OperationProblem>> = steps.iter().map(|s| s.problem.clone()).collect();
        assert_eq!(
            problems,
            vec![
                Some(OperationProblem::UnknownTable("nope".into())),
                Some(OperationProblem::BadAction),
                Some(OperationProblem::NoLocalId),
                Some(OperationProblem::DataNotAnObject),
                None,
            ]
        );
    }

    #[test]
    fn a_malformed_batch_is_refused_whole() {
        let l = links();
        assert_eq!(order(&json!({"op_id": "1"}), &l), Err(BatchError::NotAnArray("an object")));
        assert_eq!(order(&json!([1]), &l), Err(BatchError::NotAnObject { position: 0 }));
        assert_eq!(order(&json!([{"op_id": ""}]), &l), Err(BatchError::NoOpId { position: 0 }));
        assert_eq!(order(&json!([{"op_id": 7}]), &l), Err(BatchError::NoOpId { position: 0 }));
        let twice = json!([delete("a", "customers", "1"), delete("a", "customers", "2")]);
        assert_eq!(order(&twice, &l), Err(BatchError::RepeatedOpId("a".into())));
        let big = Value::Array((0..=MAX_BATCH_OPERATIONS).map(|i| delete(&i.to_string(), "customers", "1")).collect());
        assert_eq!(order(&big, &l), Err(BatchError::TooLarge(MAX_BATCH_OPERATIONS + 1)));
        assert_eq!(order(&json!([]), &l), Ok(vec![]));
    }

    #[test]
    fn retryable_errors_are_the_ones_a_second_try_can_change() {
        for state in ["40001", "40P01", "55P03", "53200", "08006", PARENT_NOT_SYNCED] {
            assert!(is_retryable(state), "{state}");
        }
        for state in ["23505", "23503", "23502", "22P02", "42703", "42501", "P0001", "428C9"] {
            assert!(!is_retryable(state), "{state}");
        }
    }
}
