//! A health client on its own connection, for tests that check health keeps
//! answering while something else loads the server.

use tonic::transport::Channel;
use tonic::Status;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

use super::Server;

/// A health client on its own connection.
pub async fn health(server: &Server) -> HealthClient<Channel> {
    let channel = Channel::from_shared(server.url())
        .unwrap()
        .connect()
        .await
        .expect("connects");
    HealthClient::new(channel)
}

/// Health/Check of the whole server: its serving status.
pub async fn serving(client: &mut HealthClient<Channel>) -> Result<i32, Status> {
    client
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .map(|r| r.into_inner().status)
}
