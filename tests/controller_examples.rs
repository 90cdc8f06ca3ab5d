//! Applying examples/ with working endpoints yields Ready credentials and target Secrets:
//! each vendor's example goes into the API server double (hosts pointed at a local server
//! that behaves as the vendor documents), and the controller does the rest.

mod support;
mod token_server;

use kube::api::{Api, PostParams};
use support::controller::*;
use token_server::{Recorded, Reply, TokenServer, vendors};
use tokensync::api::ClientCredential;
use tokensync::manifest::Manifests;

async fn apply_example(
    api: &support::apiserver::ApiServer,
    name: &str,
    real_base: &str,
    handler: impl Fn(&Recorded) -> Reply + Send + Sync + 'static,
) -> TokenServer {
    let server = TokenServer::start(handler).await;
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples").join(format!("{name}.yaml"));
    let text = std::fs::read_to_string(path).unwrap().replace(real_base, &server.base);
    let manifests = Manifests::parse(&text, name).unwrap();
    for mut secret in manifests.secrets {
        secret.metadata.namespace = Some(NS.into());
        create_secret(api, secret).await;
    }
    let ccs: Api<ClientCredential> = Api::namespaced(api.client(), NS);
    for mut cc in manifests.client_credentials {
        cc.metadata.namespace = Some(NS.into());
        ccs.create(&PostParams::default(), &cc).await.unwrap();
    }
    server
}

#[tokio::test]
async fn every_vendor_example_becomes_ready_with_its_token_in_the_target_secret() {
    let api = api_server().await;
    let _c = start(&api, args(&[]));
    let chalk = apply_example(&api, "chalk", "https://api.chalk.ai", vendors::chalk()).await;
    let chatlayer =
        apply_example(&api, "chatlayer", "https://auth.prod.europe-west1.gc.chatlayer.ai", vendors::chatlayer()).await;
    let cerkl = apply_example(&api, "cerkl", "https://api.cerkl.com", vendors::cerkl()).await;
    let charp = apply_example(&api, "charp", "https://api.charp.ai", vendors::charp()).await;
    let tali = apply_example(&api, "tali", "https://api.tali.ai", vendors::tali()).await;

    for name in ["chalk", "chatlayer", "cerkl", "charp", "tali"] {
        wait_condition(&api, name, "Ready", ("True", "TokenIssued")).await;
    }
    wait_secret_value(&api, "chalk-token", "access_token", "chalk-token-1").await;
    wait_secret_value(&api, "chatlayer-token", "authorization", "Bearer eyJhbGciOi.chatlayer").await;
    wait_secret_value(&api, "cerkl-token", "token_type", "Bearer").await;
    wait_secret_value(&api, "charp-token", "access_token", "charp-access-1").await;
    wait_secret_value(&api, "tali-token", "access_token", "MBEehXv6KQcLH39ObZ8F6FVhQsJ2Bcf7XTf64").await;

    // Refresh tokens are kept by tokensync, never handed to workloads.
    assert_eq!(secret_data(&api, "tali.tokensync-state").unwrap()["refresh_token"], vendors::TALI_REFRESH);
    assert_eq!(secret_data(&api, "charp.tokensync-state").unwrap()["refresh_token"], "def50201");
    for target in ["tali-token", "charp-token"] {
        assert!(!secret_data(&api, target).unwrap().contains_key("refresh_token"));
    }
    // One token request each (and Chalk's verification probe).
    assert_eq!(chalk.requests_to("/v1/oauth/token").len(), 1);
    assert_eq!(chalk.requests_to("/v1/who-am-i").len(), 1);
    for server in [&chatlayer, &cerkl, &charp, &tali] {
        assert_eq!(server.requests().len(), 1);
    }
}
