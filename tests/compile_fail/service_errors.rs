// Every error the macro reports itself, one per method (all reported in one build).

#[diarrhoea::service]
trait Methods {
    async fn generic<T: serde::Serialize>(&self, value: T) -> u64;
    fn not_async(&self) -> u64;
    async fn takes_mut(&mut self) -> u64;
    async fn takes_self(self) -> u64;
    async fn no_receiver(value: u64) -> u64;
    #[rpc(name = "$/mine")]
    async fn reserved_name(&self);
    #[rpc(notification)]
    async fn notification_with_result(&self) -> u64;
    #[rpc(code = -32050)]
    async fn reserved_code(&self) -> Result<u64, String>;
    #[rpc(code = 7)]
    async fn code_without_result(&self) -> u64;
    #[rpc(timeout = 5)]
    async fn unknown_option(&self);
    async fn context_that_is_not(&self, #[context(x)] peer: diarrhoea::PeerInfo);
    async fn stream_in_a_result(&self) -> Result<diarrhoea::StreamReply<u64>, String>;
}

#[diarrhoea::service]
trait Names {
    async fn add(&self, a: i64, b: i64) -> i64;
    #[rpc(name = "add")]
    async fn plus(&self, a: i64, b: i64) -> i64;
}

#[diarrhoea::service(namespace = "$/calc")]
trait ReservedNamespace {
    async fn add(&self, a: i64, b: i64) -> i64;
}

#[diarrhoea::service]
trait Generic<T> {
    async fn get(&self) -> u64;
    const LIMIT: u64;
}

fn main() {}
