// The part of the addon that needs V8's C++ API (not Node-API): the JIT code events of the
// calling thread's isolate, which name the machine code V8 generates for JavaScript, its
// sampling heap profiler, and the continuation-preserved embedder data that carries labels
// across `await` (src/cped.rs). Built against the headers of the Node that builds the addon
// (build.rs).

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>

#include <v8-profiler.h>
#include <v8.h>

extern "C" {
// Implemented in Rust (src/jit.rs). kind: 0 added, 1 moved.
void pyroscope_node_code_event(int kind, uint64_t start, uint64_t len, uint64_t new_start, const char* name,
                               size_t name_len);
// Implemented in Rust (src/heap.rs): one node of an allocation profile, `depth` 1 for the
// root's children, parents before their children; `allocations` holds `count` entries.
void pyroscope_node_heap_node(void* ctx, int depth, const char* name, size_t name_len, const char* script,
                              size_t script_len, int line, int column,
                              const v8::AllocationProfile::Allocation* allocations, size_t count);
// Implemented in Rust (src/jit.rs): V8's walk for the code that exists begins (1) or ends (0),
// on the walking isolate's thread.
void pyroscope_node_existing_code_walk(int begins);
// Implemented in Rust (src/cped.rs): a garbage collection of the isolate whose labels `cell`
// reads begins (`start` 1) or ends (0), on the isolate's thread.
void pyroscope_node_cped_gc(void* cell, int start);
}

// src/cped.rs reads a Global's handle slot: the Global is one pointer to it.
static_assert(sizeof(v8::Global<v8::Context>) == sizeof(uintptr_t), "Global layout");

// src/heap.rs reads `allocations` with this layout.
static_assert(sizeof(v8::AllocationProfile::Allocation) == 16, "Allocation layout");
static_assert(offsetof(v8::AllocationProfile::Allocation, size) == 0, "Allocation layout");
static_assert(offsetof(v8::AllocationProfile::Allocation, count) == 8, "Allocation layout");

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

void VisitHeapNode(v8::Isolate* isolate, void* ctx, const v8::AllocationProfile::Node* node, int depth) {
  {
    v8::String::Utf8Value name(isolate, node->name);
    v8::String::Utf8Value script(isolate, node->script_name);
    pyroscope_node_heap_node(ctx, depth, *name, *name == nullptr ? 0 : name.length(), *script,
                             *script == nullptr ? 0 : script.length(), node->line_number, node->column_number,
                             node->allocations.data(), node->allocations.size());
  }
  for (const v8::AllocationProfile::Node* child : node->children) VisitHeapNode(isolate, ctx, child, depth + 1);
}

// The accessors of the continuation-preserved embedder data (pyroscope_node_cped_accessors).
void CpedGet(const v8::FunctionCallbackInfo<v8::Value>& info) {
  info.GetReturnValue().Set(info.GetIsolate()->GetCurrentContext()->GetContinuationPreservedEmbedderData());
}

void CpedSet(const v8::FunctionCallbackInfo<v8::Value>& info) {
  info.GetIsolate()->GetCurrentContext()->SetContinuationPreservedEmbedderData(info[0]);
}

void OnGcPrologue(v8::Isolate*, v8::GCType, v8::GCCallbackFlags, void* cell) { pyroscope_node_cped_gc(cell, 1); }

void OnGcEpilogue(v8::Isolate*, v8::GCType, v8::GCCallbackFlags, void* cell) { pyroscope_node_cped_gc(cell, 0); }

// A word of the object at `base`, read on the object's thread outside GC (plain memory).
uint64_t WordAt(uintptr_t base, size_t index) { return *reinterpret_cast<const uint64_t*>(base + index * 8); }

// A Smi as V8 lays it out when Smis are 32-bit (no pointer compression): the value in the
// upper half, zeros below.
uint64_t SmiWord(int32_t value) { return static_cast<uint64_t>(static_cast<uint32_t>(value)) << 32; }

// The only index in [from, to) whose word of the object at `base` is `word`; 0 when none is, or
// more than one.
size_t FindWord(uintptr_t base, size_t from, size_t to, uint64_t word) {
  size_t found = 0;
  for (size_t i = from; i < to; i++) {
    if (WordAt(base, i) != word) continue;
    if (found != 0) return 0;
    found = i;
  }
  return found;
}

// A napi_value is, in Node, the address of a v8::Local's handle slot (node_api.cc's
// v8impl::JsValueFromV8LocalValue): the two convert by copying that address.
static_assert(sizeof(v8::Local<v8::Value>) == sizeof(void*), "Local layout");

v8::Local<v8::Value> LocalOf(void* napi_value) {
  v8::Local<v8::Value> local;
  std::memcpy(static_cast<void*>(&local), &napi_value, sizeof napi_value);
  return local;
}

void* NapiOf(v8::Local<v8::Value> local) {
  void* napi_value;
  std::memcpy(&napi_value, static_cast<void*>(&local), sizeof napi_value);
  return napi_value;
}

// The tagged value a Local holds (read on its thread, outside GC).
uintptr_t TaggedOf(v8::Local<v8::Value> local) { return *reinterpret_cast<const uintptr_t*>(*local); }

}  // namespace

extern "C" {

// The calling thread's isolate, or null when the thread runs no JavaScript.
void* pyroscope_node_isolate(void) { return v8::Isolate::TryGetCurrent(); }

// The code of V8's embedded builtins (and bytecode handlers): where the executable that
// carries them has it, named by that file's symbols (`Builtins_<name>`).
void pyroscope_node_embedded_code(void* isolate, uint64_t* start, uint64_t* len) {
  const void* code = nullptr;
  size_t size = 0;
  static_cast<v8::Isolate*>(isolate)->GetEmbeddedCodeRange(&code, &size);
  *start = reinterpret_cast<uintptr_t>(code);
  *len = size;
}

// Starts receiving the calling thread's isolate's code events: with `existing`, the code
// that exists now first (V8 walks its heap for it, on this thread), else new code only.
void pyroscope_node_watch_code(void* isolate, int existing) {
  static_cast<v8::Isolate*>(isolate)->SetJitCodeEventHandler(
      existing != 0 ? v8::kJitCodeEventEnumExisting : v8::kJitCodeEventDefault, OnCodeEvent);
}

// Asks `isolate`, from any thread, to report the code that exists then (and go on with new
// code) at its next interrupt check, on its own thread: while JavaScript runs, or when it next
// does. The isolate must be alive.
void pyroscope_node_request_existing_code(void* isolate) {
  static_cast<v8::Isolate*>(isolate)->RequestInterrupt(
      [](v8::Isolate* interrupted, void*) {
        pyroscope_node_existing_code_walk(1);
        interrupted->SetJitCodeEventHandler(v8::kJitCodeEventEnumExisting, OnCodeEvent);
        pyroscope_node_existing_code_walk(0);
      },
      nullptr);
}

// Gives every function interpreted from now on a frame of its own (a copy of the interpreter's
// entry), which its code events name: what node:v8's setFlagsFromString would do, without
// loading that module (and the streams it pulls in) into every profiled process.
void pyroscope_node_name_interpreted_frames(void) {
  static const char flag[] = "--interpreted-frames-native-stack";
  v8::V8::SetFlagsFromString(flag, sizeof(flag) - 1);
}

// Stops the calling thread's isolate's code events.
void pyroscope_node_unwatch_code(void) {
  v8::Isolate* isolate = v8::Isolate::TryGetCurrent();
  if (isolate != nullptr) isolate->SetJitCodeEventHandler(v8::kJitCodeEventDefault, nullptr);
}

// Starts V8's sampling heap profiler on the calling thread's isolate: a sample every
// `interval` bytes on average, stacks of at most `depth` frames; with `keep_collected`, samples
// of objects the GC has collected stay (allocations, not live memory). No forced GC.
// Returns 1 when started, 0 when the thread has no isolate, -1 when the isolate's profiler
// runs already (another tool's, or ours).
int pyroscope_node_heap_start(uint64_t interval, int depth, int keep_collected) {
  v8::Isolate* isolate = v8::Isolate::TryGetCurrent();
  if (isolate == nullptr) return 0;
  int flags = v8::HeapProfiler::kSamplingNoFlags;
  if (keep_collected != 0) {
    flags |= v8::HeapProfiler::kSamplingIncludeObjectsCollectedByMajorGC |
             v8::HeapProfiler::kSamplingIncludeObjectsCollectedByMinorGC;
  }
  bool started = isolate->GetHeapProfiler()->StartSamplingHeapProfiler(
      interval, depth, static_cast<v8::HeapProfiler::SamplingFlags>(flags));
  return started ? 1 : -1;
}

// Stops the calling thread's isolate's sampling heap profiler (its samples are discarded).
void pyroscope_node_heap_stop(void) {
  v8::Isolate* isolate = v8::Isolate::TryGetCurrent();
  if (isolate != nullptr) isolate->GetHeapProfiler()->StopSamplingHeapProfiler();
}

// Reads the calling thread's isolate's sampling heap profile: pyroscope_node_heap_node for
// every node below the root; `*samples` = V8's samples in it. Returns 0 when the profiler
// does not run (or no isolate).
int pyroscope_node_heap_read(void* ctx, size_t* samples) {
  v8::Isolate* isolate = v8::Isolate::TryGetCurrent();
  if (isolate == nullptr) return 0;
  // The profile's names are handles: they live in this scope.
  v8::HandleScope scope(isolate);
  std::unique_ptr<v8::AllocationProfile> profile(isolate->GetHeapProfiler()->GetAllocationProfile());
  if (!profile) return 0;
  *samples = profile->GetSamples().size();
  for (const v8::AllocationProfile::Node* child : profile->GetRootNode()->children) {
    VisitHeapNode(isolate, ctx, child, 1);
  }
  return 1;
}

// Continuation-preserved embedder data (CPED), V8 11.x (Node 20): a field of the native context
// that V8 copies into every promise reaction when `await` or `then` registers it and puts back
// while the reaction runs. Labels stored there, as a small JavaScript object (a carrier, see
// lib/labels.js) that holds the label set's id as a Smi next to a magic Smi, follow `await`
// with no work per await, and stay alive as long as a reaction holds them. The signal handler
// reads them with four loads (src/cped.rs) at offsets found here.

// Where the handler reads: the Global's handle slot and three byte offsets.
struct CpedLayout {
  uintptr_t handle_slot;
  size_t context_offset;
  size_t magic_offset;
  size_t id_offset;
};

// Takes the calling thread's current context for labels: a heap-allocated Global of it, or null
// when the thread has no isolate, when the field holds something already (someone else's), or
// when a place cannot be found. Fills `*layout`: the address of the Global's handle slot
// (which the GC rewrites when it moves the context), the field's byte offset in the context,
// and the byte offsets of the magic and the id in a carrier. The offsets are found, not
// assumed: sentinel Smis are stored through the API and the context's first 64 words searched
// for them; `sample` (a napi_value) is a carrier holding `magic` and `sentinel`, whose first 16
// words are searched for them. The field is left undefined.
void* pyroscope_node_cped_open(void* sample, int32_t magic, int32_t sentinel, CpedLayout* layout) {
  v8::Isolate* isolate = v8::Isolate::TryGetCurrent();
  if (isolate == nullptr) return nullptr;
  v8::HandleScope scope(isolate);
  v8::Local<v8::Context> context = isolate->GetCurrentContext();
  if (context.IsEmpty() || !context->GetContinuationPreservedEmbedderData()->IsUndefined()) return nullptr;
  const uintptr_t carrier = TaggedOf(LocalOf(sample));
  const size_t magic_at = (carrier & 3) == 1 ? FindWord(carrier - 1, 1, 16, SmiWord(magic)) : 0;
  const size_t id_at = (carrier & 3) == 1 ? FindWord(carrier - 1, 1, 16, SmiWord(sentinel)) : 0;
  if (magic_at == 0 || id_at == 0) return nullptr;
  auto* global = new v8::Global<v8::Context>(isolate, context);
  const uintptr_t slot = *reinterpret_cast<const uintptr_t*>(global);
  const uintptr_t tagged = *reinterpret_cast<const uintptr_t*>(slot);
  size_t found = 0;
  if ((tagged & 3) == 1) {
    const uintptr_t base = tagged - 1;
    constexpr int32_t kFirst = 0x50795243, kSecond = -0x2ced5a3;
    context->SetContinuationPreservedEmbedderData(v8::Integer::New(isolate, kFirst));
    found = FindWord(base, 2, 64, SmiWord(kFirst));
    if (found != 0) {
      context->SetContinuationPreservedEmbedderData(v8::Integer::New(isolate, kSecond));
      if (WordAt(base, found) != SmiWord(kSecond)) found = 0;
    }
    context->SetContinuationPreservedEmbedderData(v8::Undefined(isolate));
    if (found != 0 && WordAt(base, found) == SmiWord(kSecond)) found = 0;
  }
  if (found == 0) {
    global->Reset();
    delete global;
    return nullptr;
  }
  *layout = CpedLayout{slot, found * 8, magic_at * 8, id_at * 8};
  return global;
}

// Calls pyroscope_node_cped_gc(cell, ...) around each garbage collection of `isolate` (`on` 1),
// or stops (0). On the isolate's thread.
void pyroscope_node_cped_watch_gc(void* isolate, void* cell, int on) {
  auto* i = static_cast<v8::Isolate*>(isolate);
  if (on != 0) {
    i->AddGCPrologueCallback(OnGcPrologue, cell);
    i->AddGCEpilogueCallback(OnGcEpilogue, cell);
  } else {
    i->RemoveGCPrologueCallback(OnGcPrologue, cell);
    i->RemoveGCEpilogueCallback(OnGcEpilogue, cell);
  }
}

// The two JavaScript functions that read and write the field, [get, set], as a napi_value of the
// calling JavaScript call's scope, or null. Plain V8 API functions, not Node-API ones: a
// labelled call uses three of them, and a Node-API call costs ten times more. They act on the
// field of the context they were made in (the calling one), which V8 makes current when they
// run. On the context's thread, inside a call from JavaScript, after pyroscope_node_cped_open.
void* pyroscope_node_cped_accessors() {
  v8::Isolate* isolate = v8::Isolate::GetCurrent();
  v8::EscapableHandleScope scope(isolate);
  v8::Local<v8::Context> context = isolate->GetCurrentContext();
  v8::Local<v8::Function> get, set;
  if (!v8::Function::New(context, CpedGet, v8::Local<v8::Value>(), 0, v8::ConstructorBehavior::kThrow,
                         v8::SideEffectType::kHasNoSideEffect)
           .ToLocal(&get) ||
      !v8::Function::New(context, CpedSet, v8::Local<v8::Value>(), 1, v8::ConstructorBehavior::kThrow).ToLocal(&set))
    return nullptr;
  v8::Local<v8::Value> both[] = {get, set};
  return NapiOf(scope.Escape(v8::Array::New(isolate, both, 2)));
}

// Frees a Global that pyroscope_node_cped_open made, on its isolate's thread.
void pyroscope_node_cped_close(void* global) {
  auto* g = static_cast<v8::Global<v8::Context>*>(global);
  g->Reset();
  delete g;
}

}  // extern "C"
