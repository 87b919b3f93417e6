//! What the host-facing services count, for Prometheus (`/metrics` on the
//! node's HTTP listener).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Mapped {
    /// "true" when the client's address matched a site subnet.
    pub mapped: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Outcome {
    /// ok, not_modified, registered, not_found, invalid, unavailable, error.
    pub result: String,
}

/// The counters; cheap to update from any task.
#[derive(Default)]
pub struct Metrics {
    pub locates: Family<Mapped, Counter>,
    pub pulls: Family<Outcome, Counter>,
    /// Watch streams open now.
    pub watches: Gauge,
    /// Distinct client addresses that matched no site subnet.
    pub unmapped: Gauge,
}

impl Metrics {
    pub fn register(&self, r: &mut Registry) {
        r.register(
            "cairn_locate",
            "Locate calls, by whether the client's address matched a site subnet",
            self.locates.clone(),
        );
        r.register(
            "cairn_pull",
            "Config.Pull calls, by outcome",
            self.pulls.clone(),
        );
        r.register(
            "cairn_watch_streams",
            "Config.Watch streams open",
            self.watches.clone(),
        );
        r.register(
            "cairn_unmapped_client_addresses",
            "Distinct client addresses that matched no site subnet (cairn subnets unmapped)",
            self.unmapped.clone(),
        );
    }

    pub fn pull(&self, result: &str) {
        self.pulls
            .get_or_create(&Outcome {
                result: result.to_string(),
            })
            .inc();
    }
}
