//! The `ControlPlane` gRPC service: a thin shell over the `Store` and the placement
//! driver. Every RPC answers `UNIMPLEMENTED` with a message until the control-plane
//! issue lands; the server around it (health, reflection, limits) is real.

use std::pin::Pin;

use futures_core::Stream;
use meridian_proto::control::v1 as pb;
use meridian_proto::control::v1::control_plane_server::ControlPlane;
use tonic::{Request, Response, Status, Streaming};

use crate::ControlConfig;

/// A control-plane replica.
#[derive(Debug, Clone)]
pub struct ControlPlaneService {
    config: ControlConfig,
}

impl ControlPlaneService {
    pub fn new(config: ControlConfig) -> Self {
        Self { config }
    }

    pub fn config(&self) -> &ControlConfig {
        &self.config
    }
}

fn unimplemented(rpc: &str) -> Status {
    Status::unimplemented(format!(
        "ControlPlane.{rpc} is not implemented yet in this build of meridian"
    ))
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl ControlPlane for ControlPlaneService {
    async fn register(
        &self,
        _request: Request<pb::RegisterRequest>,
    ) -> Result<Response<pb::RegisterResponse>, Status> {
        Err(unimplemented("Register"))
    }

    type ReportStream = BoxStream<pb::ControlMessage>;

    async fn report(
        &self,
        _request: Request<Streaming<pb::PopMessage>>,
    ) -> Result<Response<Self::ReportStream>, Status> {
        Err(unimplemented("Report"))
    }

    type WatchFleetStream = BoxStream<pb::FleetEvent>;

    async fn watch_fleet(
        &self,
        _request: Request<pb::WatchFleetRequest>,
    ) -> Result<Response<Self::WatchFleetStream>, Status> {
        Err(unimplemented("WatchFleet"))
    }

    async fn report_demand(
        &self,
        _request: Request<pb::DemandReport>,
    ) -> Result<Response<pb::DemandAck>, Status> {
        Err(unimplemented("ReportDemand"))
    }

    async fn plan(
        &self,
        _request: Request<pb::PlanRequest>,
    ) -> Result<Response<pb::PlanResponse>, Status> {
        Err(unimplemented("Plan"))
    }

    async fn apply(
        &self,
        _request: Request<pb::ApplyRequest>,
    ) -> Result<Response<pb::ApplyResponse>, Status> {
        Err(unimplemented("Apply"))
    }

    async fn get_placement(
        &self,
        _request: Request<pb::GetPlacementRequest>,
    ) -> Result<Response<pb::Placement>, Status> {
        Err(unimplemented("GetPlacement"))
    }

    async fn drain(
        &self,
        _request: Request<pb::DrainRequest>,
    ) -> Result<Response<pb::DrainResponse>, Status> {
        Err(unimplemented("Drain"))
    }

    async fn cordon(
        &self,
        _request: Request<pb::CordonRequest>,
    ) -> Result<Response<pb::CordonResponse>, Status> {
        Err(unimplemented("Cordon"))
    }

    async fn get_policy(
        &self,
        _request: Request<pb::GetPolicyRequest>,
    ) -> Result<Response<pb::Policy>, Status> {
        Err(unimplemented("GetPolicy"))
    }

    async fn set_policy(
        &self,
        _request: Request<pb::Policy>,
    ) -> Result<Response<pb::Policy>, Status> {
        Err(unimplemented("SetPolicy"))
    }
}
