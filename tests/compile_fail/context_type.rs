// A `#[context]` parameter must be a context type: the compiler's own error names the type
// and the types it could be.

#[diarrhoea::service]
trait Service {
    async fn takes_a_string_as_context(&self, #[context] name: String) -> u64;
}

fn main() {}
