//! The API server double behaves like Kubernetes through a real kube::Client.

mod support;

use support::apiserver::ApiServer;

#[tokio::test]
async fn starts() {
    let server = ApiServer::start().await;
    let _ = server.client();
}
