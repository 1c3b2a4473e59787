// The part of the addon that needs V8's C++ API (not Node-API): the JIT code events of the
// calling thread's isolate, which name the machine code V8 generates for JavaScript.
// Built against the headers of the Node that builds the addon (build.rs).

#include <cstddef>
#include <cstdint>

#include <v8.h>

extern "C" {
// Implemented in Rust (src/jit.rs). kind: 0 added, 1 moved.
void pyroscope_node_code_event(int kind, uint64_t start, uint64_t len, uint64_t new_start, const char* name,
                               size_t name_len);
}

namespace {

void OnCodeEvent(const v8::JitCodeEvent* event) {
  switch (event->type) {
    case v8::JitCodeEvent::CODE_ADDED:
      // Bytecode arrays are data, not code a thread executes.
      if (event->code_type == v8::JitCodeEvent::BYTE_CODE) return;
      pyroscope_node_code_event(0, reinterpret_cast<uintptr_t>(event->code_start), event->code_len, 0,
                                event->name.str, event->name.len);
      return;
    case v8::JitCodeEvent::CODE_MOVED:
      if (event->code_type == v8::JitCodeEvent::BYTE_CODE) return;
      pyroscope_node_code_event(1, reinterpret_cast<uintptr_t>(event->code_start), event->code_len,
                                reinterpret_cast<uintptr_t>(event->new_code_start), nullptr, 0);
      return;
    default:
      return;
  }
}

}  // namespace

extern "C" {

// Starts receiving the calling thread's isolate's code events, the existing code first.
// Returns 0 when the thread has no isolate.
int pyroscope_node_watch_code(void) {
  v8::Isolate* isolate = v8::Isolate::TryGetCurrent();
  if (isolate == nullptr) return 0;
  isolate->SetJitCodeEventHandler(v8::kJitCodeEventEnumExisting, OnCodeEvent);
  return 1;
}

// Stops the calling thread's isolate's code events.
void pyroscope_node_unwatch_code(void) {
  v8::Isolate* isolate = v8::Isolate::TryGetCurrent();
  if (isolate != nullptr) isolate->SetJitCodeEventHandler(v8::kJitCodeEventDefault, nullptr);
}

}  // extern "C"
