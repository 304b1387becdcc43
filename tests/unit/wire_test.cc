#include "common/wire.h"
#include "common/validate.h"

#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <random>

namespace gpubroker::wire {
namespace {

template <typename T>
T RoundTrip(const T& in, uint32_t request_id = 42) {
  auto bytes = EncodeRequest(request_id, in);
  auto frame = ParseFrame(bytes);
  EXPECT_TRUE(frame.ok()) << frame.status().ToString();
  EXPECT_EQ(frame->request_id, request_id);
  EXPECT_EQ(frame->type, T::kType);
  auto out = Decode<T>(frame->payload);
  EXPECT_TRUE(out.ok()) << out.status().ToString();
  EXPECT_EQ(std::memcmp(&in, &*out, sizeof(T)), 0);
  return *out;
}

SlotDescriptor SampleSlot() {
  SlotDescriptor d{};
  std::strcpy(d.name, "layers/0.weight");
  d.state = static_cast<uint16_t>(SlotState::kLive);
  d.backend = static_cast<uint16_t>(BackendKind::kHost);
  d.allocation_id = 7;
  d.allocation_bytes = 4096;
  d.nbuffers = 1;
  d.buffer_bytes = 4096;
  d.byte_offset = 512;
  d.dtype_code = DType::kFloat;
  d.dtype_bits = 32;
  d.dtype_lanes = 1;
  d.ndim = 2;
  d.shape[0] = 4;
  d.shape[1] = 8;
  d.strides[0] = 8;
  d.strides[1] = 1;
  d.nbytes = 128;
  d.mode = 0640;
  return d;
}

CreateRequest SampleCreate() {
  CreateRequest m{};
  m.name.set("a/b");
  m.ndim = 2;
  m.shape[0] = 3;
  m.shape[1] = 5;
  m.dtype_code = DType::kBfloat;
  m.dtype_bits = 16;
  m.dtype_lanes = 1;
  m.mode = 0600;
  m.device_ordinal = -1;
  m.flags = kCreateAttach;
  return m;
}

TEST(Wire, EveryRequestRoundTrips) {
  HelloRequest hello{};
  hello.protocol_version = kProtocolVersion;
  hello.pid = 1234;
  hello.client_name.set("trainer");
  RoundTrip(hello);
  RoundTrip(SampleCreate());
  AttachRequest attach{};
  attach.name.set("a/b");
  attach.flags = kAttachReadOnly;
  RoundTrip(attach);
  RoundTrip(DetachRequest{99});
  DestroyRequest destroy{};
  destroy.name.set("x");
  RoundTrip(destroy);
  StatRequest stat{};
  stat.name.set("x");
  RoundTrip(stat);
  RoundTrip(ListRequest{3, 10});
  RoundTrip(ClientsRequest{0, 5});
  RoundTrip(LeasesRequest{0, 5});
  RoundTrip(DevicesRequest{0, 5});
  RoundTrip(StatusRequest{});
  RoundTrip(ShutdownRequest{});
}

template <typename T>
void ReplyRoundTrip(const T& in) {
  auto bytes = EncodeReply(9, in);
  auto frame = ParseFrame(bytes);
  ASSERT_TRUE(frame.ok());
  EXPECT_EQ(frame->reply, T::kType != MsgType::kError && T::kType != MsgType::kNotice);
  auto out = Decode<T>(frame->payload);
  ASSERT_TRUE(out.ok()) << out.status().ToString();
  EXPECT_EQ(std::memcmp(&in, &*out, sizeof(T)), 0);
}

TEST(Wire, EveryReplyRoundTrips) {
  HelloReply hello{};
  hello.protocol_version = 1;
  hello.boot_generation = 77;
  hello.registry_name.set("gpubroker");
  ReplyRoundTrip(hello);
  AttachReply attach{};
  attach.slot = SampleSlot();
  attach.access = kAccessRead | kAccessWrite;
  attach.has_fd = 1;
  ReplyRoundTrip(attach);
  ReplyRoundTrip(SlotReply{SampleSlot()});
  ReplyRoundTrip(DetachReply{2, 0});
  ReplyRoundTrip(DestroyReply{7, 1, 0});
  StatusReply status{};
  status.registry_name.set("r");
  status.broker_version.set("0.1.0");
  status.slots = 3;
  ReplyRoundTrip(status);
  ReplyRoundTrip(ShutdownReply{});
  Notice notice{kNoticeStopping, 0, {}};
  notice.message.set("bye");
  ReplyRoundTrip(notice);
}

TEST(Wire, ErrorCarriesCodeAndMessage) {
  auto bytes = EncodeError(5, NotFound("no slot named 'x'"));
  auto frame = ParseFrame(bytes);
  ASSERT_TRUE(frame.ok());
  EXPECT_EQ(frame->type, MsgType::kError);
  auto e = Decode<ErrorReply>(frame->payload);
  ASSERT_TRUE(e.ok());
  EXPECT_EQ(e->code, static_cast<uint16_t>(Code::kNotFound));
  EXPECT_EQ(e->message.view(), "no slot named 'x'");
}

TEST(Wire, ListRepliesRoundTripWithRecords) {
  std::vector<SlotDescriptor> slots = {SampleSlot(), SampleSlot()};
  std::strcpy(slots[1].name, "other");
  auto bytes = EncodeListReply(3, ListReply{2, kEndCursor}, std::span<const SlotDescriptor>(slots));
  auto frame = ParseFrame(bytes);
  ASSERT_TRUE(frame.ok());
  auto list = DecodeList<ListReply>(frame->payload);
  ASSERT_TRUE(list.ok()) << list.status().ToString();
  ASSERT_EQ(list->records.size(), 2u);
  EXPECT_STREQ(list->records[1].name, "other");

  std::vector<ClientRecord> clients(1);
  clients[0].client_id = 5;
  clients[0].name.set("c");
  auto cb = EncodeListReply(1, ClientsReply{1, kEndCursor}, std::span<const ClientRecord>(clients));
  auto cl = DecodeList<ClientsReply>(ParseFrame(cb)->payload);
  ASSERT_TRUE(cl.ok());
  EXPECT_EQ(cl->records[0].client_id, 5u);

  std::vector<DeviceRecord> devices(2);
  devices[1].ordinal = 1;
  devices[1].uuid[0] = 0xab;
  devices[1].allocated_bytes = 1 << 21;
  auto db = EncodeListReply(1, DevicesReply{2, kEndCursor}, std::span<const DeviceRecord>(devices));
  auto dl = DecodeList<DevicesReply>(ParseFrame(db)->payload);
  ASSERT_TRUE(dl.ok()) << dl.status().ToString();
  EXPECT_EQ(dl->records[1].uuid[0], 0xab);
  EXPECT_EQ(dl->records[1].allocated_bytes, 1u << 21);
  devices[1].ordinal = -1;  // a negative ordinal is refused
  auto bad = EncodeListReply(1, DevicesReply{2, kEndCursor}, std::span<const DeviceRecord>(devices));
  EXPECT_FALSE(DecodeList<DevicesReply>(ParseFrame(bad)->payload).ok());

  std::vector<LeaseRecord> leases(1);
  leases[0].count = 2;
  leases[0].slot.set("s");
  auto lb = EncodeListReply(1, LeasesReply{1, kEndCursor}, std::span<const LeaseRecord>(leases));
  auto ll = DecodeList<LeasesReply>(ParseFrame(lb)->payload);
  ASSERT_TRUE(ll.ok());
  EXPECT_EQ(ll->records[0].count, 2u);
}

TEST(Wire, ListReplyWithWrongRecordCountIsRejected) {
  std::vector<SlotDescriptor> slots = {SampleSlot()};
  auto bytes = EncodeListReply(3, ListReply{2, kEndCursor}, std::span<const SlotDescriptor>(slots));
  auto list = DecodeList<ListReply>(ParseFrame(bytes)->payload);
  EXPECT_EQ(list.status().code(), Code::kProtocol);
}

TEST(Wire, EveryTruncationIsRejected) {
  auto bytes = EncodeRequest(1, SampleCreate());
  for (size_t n = 0; n < bytes.size(); ++n) {
    auto frame = ParseFrame(std::span(bytes).first(n));
    if (!frame.ok()) {
      EXPECT_EQ(frame.status().code(), Code::kProtocol);
      continue;
    }
    ADD_FAILURE() << "a " << n << "-byte prefix parsed";
  }
  // A header that agrees with a short payload still fails the payload's size check.
  auto short_msg = EncodeRaw(static_cast<uint16_t>(MsgType::kCreate), 1,
                             std::span(bytes).subspan(sizeof(Header), 100));
  auto frame = ParseFrame(short_msg);
  ASSERT_TRUE(frame.ok());
  EXPECT_EQ(Decode<CreateRequest>(frame->payload).status().code(), Code::kProtocol);
}

TEST(Wire, CorruptHeadersAreRejected) {
  auto good = EncodeRequest(1, DetachRequest{1});
  auto bad_magic = good;
  bad_magic[0] = std::byte{0};
  EXPECT_NE(ParseFrame(bad_magic).status().message().find("magic"), std::string::npos);
  auto bad_version = good;
  bad_version[4] = std::byte{9};
  EXPECT_NE(ParseFrame(bad_version).status().message().find("version"), std::string::npos);
  auto bad_length = good;
  bad_length[12] = std::byte{200};
  EXPECT_EQ(ParseFrame(bad_length).status().code(), Code::kProtocol);
  std::vector<std::byte> huge(kMaxMessageBytes + 1);
  EXPECT_EQ(ParseFrame(huge).status().code(), Code::kProtocol);
}

TEST(Wire, CorruptFieldsAreRejected) {
  CreateRequest m = SampleCreate();
  std::memset(m.name.bytes, 'a', sizeof m.name.bytes);  // no terminator
  EXPECT_EQ(Validate(m).code(), Code::kProtocol);
  m = SampleCreate();
  m.ndim = 9;
  EXPECT_EQ(Validate(m).code(), Code::kInvalidArgument);
  m = SampleCreate();
  m.mode = 01777;
  EXPECT_EQ(Validate(m).code(), Code::kInvalidArgument);
  m = SampleCreate();
  m.flags = 0x100;
  EXPECT_EQ(Validate(m).code(), Code::kInvalidArgument);
  m = SampleCreate();
  m.reserved[2] = 1;
  EXPECT_EQ(Validate(m).code(), Code::kProtocol);
  m = SampleCreate();
  m.dtype_bits = 3;
  EXPECT_EQ(Validate(m).code(), Code::kInvalidArgument);
  m = SampleCreate();
  m.backend = 17;
  EXPECT_EQ(Validate(m).code(), Code::kInvalidArgument);
  m = SampleCreate();
  m.name.set("../etc");
  EXPECT_EQ(Validate(m).code(), Code::kInvalidArgument);
  EXPECT_EQ(Validate(ListRequest{0, 0}).code(), Code::kInvalidArgument);
  EXPECT_EQ(Validate(StatusRequest{1}).code(), Code::kProtocol);
  AttachReply reply{};
  reply.slot = SampleSlot();
  reply.slot.shape[0] = 1000;  // no longer fits the allocation
  EXPECT_EQ(Validate(reply).code(), Code::kProtocol);
}

// Whatever survives decoding satisfies the guarantees handlers rely on.
TEST(Wire, MutatedMessagesThatDecodeKeepTheirInvariants) {
  std::mt19937_64 rng(std::random_device{}());
  auto base = EncodeRequest(1, SampleCreate());
  int accepted = 0;
  for (int i = 0; i < 20000; ++i) {
    auto bytes = base;
    int flips = 1 + static_cast<int>(rng() % 8);
    for (int f = 0; f < flips; ++f) bytes[rng() % bytes.size()] ^= std::byte(1u << (rng() % 8));
    auto frame = ParseFrame(bytes);
    if (!frame.ok() || frame->type != MsgType::kCreate) continue;
    auto m = Decode<CreateRequest>(frame->payload);
    if (!m.ok()) continue;
    ++accepted;
    ASSERT_TRUE(m->name.terminated());
    ASSERT_TRUE(ValidateName(m->name.view()).ok());
    ASSERT_LE(m->ndim, kMaxDims);
    ASSERT_LE(m->mode, 0777u);
    ASSERT_EQ(m->flags & ~kCreateKnownFlags, 0u);
  }
  EXPECT_LT(accepted, 20000);  // most mutations are caught
  EXPECT_GT(accepted, 0);      // and the decoder still takes the valid ones among them
}

// The fuzzers' seeds must speak the protocol of today: a seed of an older
// version stops at the frame check or the hello, and the fuzzer then reaches
// the code behind them only if it happens on the version by mutation.
std::vector<std::byte> ReadFile(const std::filesystem::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::vector<char> chars((std::istreambuf_iterator<char>(in)), {});
  std::vector<std::byte> bytes(chars.size());
  std::memcpy(bytes.data(), chars.data(), chars.size());
  return bytes;
}

template <Payload T>
bool Decodes(const Frame& f) {
  return Decode<T>(f.payload).ok();
}

TEST(FuzzSeeds, ProtocolSeedsParseAndDecodeAtThisVersion) {
  int seen = 0;
  for (const auto& e : std::filesystem::directory_iterator(GPUBROKER_SOURCE_DIR "/fuzz/corpus/protocol")) {
    auto bytes = ReadFile(e.path());
    auto f = ParseFrame(bytes);
    ASSERT_TRUE(f.ok()) << e.path() << ": " << f.status().ToString();
    bool ok = true;
    switch (f->type) {
      case MsgType::kHello: ok = Decodes<HelloRequest>(*f); break;
      case MsgType::kCreate: ok = Decodes<CreateRequest>(*f); break;
      case MsgType::kAttach: ok = Decodes<AttachRequest>(*f); break;
      case MsgType::kDetach: ok = Decodes<DetachRequest>(*f); break;
      case MsgType::kDestroy: ok = Decodes<DestroyRequest>(*f); break;
      case MsgType::kList: ok = Decodes<ListRequest>(*f); break;
      case MsgType::kStat: ok = Decodes<StatRequest>(*f); break;
      case MsgType::kWriteBegin: ok = Decodes<WriteBeginRequest>(*f); break;
      case MsgType::kCommit: ok = Decodes<CommitRequest>(*f); break;
      case MsgType::kAcquire: ok = Decodes<AcquireRequest>(*f); break;
      case MsgType::kRelease: ok = Decodes<ReleaseRequest>(*f); break;
      case MsgType::kError: ok = Decodes<ErrorReply>(*f); break;
      default: break;  // the payload-less ones: the frame is all
    }
    EXPECT_TRUE(ok) << e.path() << ": its payload does not decode as its type's";
    ++seen;
  }
  EXPECT_GE(seen, 10);
}

TEST(FuzzSeeds, HandlerSeedsSayHelloAtThisVersion) {
  // Records: [op][client][length u16][bytes]; op & 3 == 3 frames bytes[1..]
  // as type bytes[0], op & 3 == 2 sends the bytes as they are.
  int hellos = 0, seeds = 0;
  for (const auto& e : std::filesystem::directory_iterator(GPUBROKER_SOURCE_DIR "/fuzz/corpus/handler")) {
    auto d = ReadFile(e.path());
    ++seeds;
    for (size_t pos = 0; pos + 4 <= d.size();) {
      const auto op = static_cast<uint8_t>(d[pos]);
      uint16_t len;
      std::memcpy(&len, &d[pos + 2], 2);
      const std::byte* body = &d[pos + 4];
      ASSERT_LE(pos + 4 + len, d.size()) << e.path();
      uint32_t version = 0;
      if ((op & 3) == 3 && len >= 5 && static_cast<uint8_t>(body[0]) == static_cast<uint8_t>(MsgType::kHello)) {
        std::memcpy(&version, body + 1, 4);
      } else if ((op & 3) == 2 && len >= sizeof(Header)) {
        auto f = ParseFrame(std::span(body, len));
        EXPECT_TRUE(f.ok()) << e.path() << " at byte " << pos << ": " << f.status().ToString();
        if (f.ok() && f->type == MsgType::kHello) {
          auto h = Decode<HelloRequest>(f->payload);
          if (h.ok()) version = h->protocol_version;
        }
      }
      if (version != 0) {
        EXPECT_EQ(version, kProtocolVersion) << e.path() << " at byte " << pos;
        ++hellos;
      }
      pos += 4 + len;
    }
  }
  EXPECT_GE(seeds, 3);
  EXPECT_GE(hellos, seeds);
}

}  // namespace
}  // namespace gpubroker::wire
