//! Metric names of the router, Prometheus style.

pub const REQUESTS_TOTAL: &str = "meridian_router_requests_total";
pub const REFUSED_TOTAL: &str = "meridian_router_refused_total";
pub const RETRIES_TOTAL: &str = "meridian_router_retries_total";
pub const TTFT_SECONDS: &str = "meridian_router_time_to_first_token_seconds";
pub const E2E_SECONDS: &str = "meridian_router_request_duration_seconds";
pub const SCORE_SECONDS: &str = "meridian_router_score_duration_seconds";
pub const TPOT_SECONDS: &str = "meridian_router_time_per_output_token_seconds";
/// Requests shed with 429 because every allowed worker was saturated.
pub const SHED_TOTAL: &str = "meridian_router_shed_total";
pub const DEMAND_REPORTS_TOTAL: &str = "meridian_router_demand_reports_total";
