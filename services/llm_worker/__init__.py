"""The generator and evaluator's shared service-side library: running one LLM task (worker),
wiring per-tier consumers to it (service), the stored responses (response_store) and the
retry decision (retry_policy). Only those two services import it."""
