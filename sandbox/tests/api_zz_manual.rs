#[tokio::test]
#[ignore]
async fn manual_server() {
    let s = warren_sandbox::ApiServer::start(warren_sandbox::ServerOptions { port: 18089, ..Default::default() }).await.unwrap();
    s.write_kubeconfig(std::path::Path::new("/tmp/wl.kubeconfig")).unwrap();
    tokio::time::sleep(std::time::Duration::from_secs(400)).await;
    s.shutdown().await;
}
