//! A shard's egress records for clients: every egress record its committed invocations
//! produced, numbered in log order (the same numbers after a restart, since recovery replays
//! the same records), the latest `egress_records_retained_max` kept for subscribers.

use std::collections::VecDeque;
use std::rc::Rc;

use statefun_core::{Egress, Entry, Record};

use crate::limits;
use crate::rt::Signal;

/// One shard's retained egress records.
#[derive(Debug, Default)]
pub struct EgressLog {
    records: VecDeque<Egress>,
    /// The position of `records[0]`.
    first: u64,
    /// Wakes whoever delivers records to subscribers.
    pub signal: Rc<Signal>,
}

impl EgressLog {
    /// Appends a committed record; the oldest goes once the bound is reached.
    pub fn push(&mut self, egress: Egress) {
        self.records.push_back(egress);
        if self.records.len() > limits::egress_records_retained_max {
            self.records.pop_front();
            self.first += 1;
        }
        self.signal.notify();
    }

    /// Appends the egress of recovered records, in log order.
    pub fn recover(&mut self, records: &[Record]) {
        for record in records {
            if let Entry::Invoked(invocation) = &record.entry {
                for egress in &invocation.egress {
                    self.push(egress.clone());
                }
            }
        }
    }

    /// The oldest position still kept.
    pub fn first(&self) -> u64 {
        self.first
    }

    pub fn get(&self, position: u64) -> Option<&Egress> {
        let index = position.checked_sub(self.first)?;
        self.records.get(usize::try_from(index).ok()?)
    }
}

#[cfg(test)]
mod tests {
    use statefun_core::{TypeName, TypedValue};

    use super::*;

    fn egress(n: usize) -> Egress {
        let name = TypeName::parse("a/out").unwrap();
        Egress { egress: name, value: TypedValue::new(TypeName::parse("a/n").unwrap(), n.to_string()) }
    }

    #[test]
    fn positions_survive_the_retention_bound() {
        let mut log = EgressLog::default();
        for n in 0..limits::egress_records_retained_max + 10 {
            log.push(egress(n));
        }
        assert_eq!(log.first(), 10);
        let last = limits::egress_records_retained_max as u64 + 9;
        assert_eq!(log.get(last).unwrap().value.as_text().unwrap(), last.to_string());
        assert!(log.get(last + 1).is_none());
        assert_eq!(log.get(10).unwrap().value.as_text().unwrap(), "10");
        assert!(log.get(9).is_none());
    }
}
