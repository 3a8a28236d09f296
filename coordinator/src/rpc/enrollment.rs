use std::sync::Arc;

use kh::proto::enrollment_server::Enrollment;
use kh::proto::{EnrollRequest, EnrollResponse};
use tonic::{Request, Response, Status};

use crate::Coordinator;

pub struct EnrollmentService(pub Arc<Coordinator>);

#[tonic::async_trait]
impl Enrollment for EnrollmentService {
    async fn enroll(
        &self,
        req: Request<EnrollRequest>,
    ) -> Result<Response<EnrollResponse>, Status> {
        let r = req.into_inner();
        let coord = self.0.clone();
        // Signing and the store's fsync block; keep them off the reactor, a
        // bounded number at a time.
        let issued = super::blocking(&self.0.signing, move || {
            coord.enroll(&r.token, &r.node_name, &r.csr_pem)
        })
        .await?;
        Ok(Response::new(EnrollResponse {
            certificate_pem: issued.cert_pem,
            ca_pem: self.0.pki.ca().cert_pem().to_string(),
            coordinator_serial: self.0.pki.serving_serial.clone(),
        }))
    }
}
