//! bypass-load: an HTTP/1.1 load generator that measures honestly (open loop,
//! coordinated-omission correction, HdrHistogram) at less client CPU per request than wrk.
