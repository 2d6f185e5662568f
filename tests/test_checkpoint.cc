// test_checkpoint.cc — safetensors checkpoints: round trips of every dtype, the exact
// byte layout, interoperability with the Python `safetensors` package (when installed), crash-safe
// saving, every kind of corrupted or hostile file, and a fuzz loop of random byte flips and
// truncations that must never crash or read out of bounds (run under ASan in tools/test).
#include <dirent.h>
#include <stdlib.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "testing.h"

using namespace flxt;

namespace {

class CheckpointTest : public CpuTest {
  protected:
    void SetUp() override {
        CpuTest::SetUp();
        std::string tmpl = ::testing::TempDir() + "flx_ckpt_XXXXXX";
        std::vector<char> buf(tmpl.begin(), tmpl.end());
        buf.push_back(0);
        ASSERT_NE(mkdtemp(buf.data()), nullptr);
        dir = buf.data();
    }
    void TearDown() override {
        if (!dir.empty()) {
            DIR *d = opendir(dir.c_str());
            if (d) {
                while (dirent *e = readdir(d))
                    if (std::strcmp(e->d_name, ".") && std::strcmp(e->d_name, ".."))
                        unlink((dir + "/" + e->d_name).c_str());
                closedir(d);
            }
            rmdir(dir.c_str());
        }
        CpuTest::TearDown();
    }
    std::string path(const char *name) const { return dir + "/" + name; }
    std::vector<std::string> files() const {
        std::vector<std::string> out;
        DIR *d = opendir(dir.c_str());
        if (!d) return out;
        while (dirent *e = readdir(d))
            if (std::strcmp(e->d_name, ".") && std::strcmp(e->d_name, "..")) out.push_back(e->d_name);
        closedir(d);
        return out;
    }
    std::string dir;
};

std::string read_bytes(const std::string &p) {
    std::ifstream f(p, std::ios::binary);
    std::stringstream ss;
    ss << f.rdbuf();
    return ss.str();
}

void write_bytes(const std::string &p, const std::string &b) {
    std::ofstream f(p, std::ios::binary | std::ios::trunc);
    f.write(b.data(), (std::streamsize)b.size());
}

// A file from a header string and a data region.
std::string make_file(const std::string &header, const std::string &data) {
    std::string out(8, '\0');
    uint64_t n = header.size();
    for (int k = 0; k < 8; k++) out[k] = (char)((n >> (8 * k)) & 0xff);
    return out + header + data;
}

TEST_F(CheckpointTest, RoundTripEveryDtypeWithMetadata) {
    flx_tensor *ts[7] = {
        make(ctx, FLX_F32, {2, 3}, {1.5, -2, 3.25, 4, 5, -6}),
        make(ctx, FLX_F64, {3}, {1e-300, -2.5, 1e300}),
        make(ctx, FLX_I32, {2, 2}, {-7, 8, 2147483647, -2147483648.0}),
        make(ctx, FLX_I64, {1, 1, 2}, {-9007199254740993.0, 42}),
        make(ctx, FLX_BOOL, {4}, {1, 0, 0, 1}),
        make(ctx, FLX_F32, {}, {7}),
        make(ctx, FLX_F64, {0, 3}, {}),
    };
    const char *names[7] = {"layer.0.weight", "b", "ints", "longs", "mask", "scalar", "empty \"q\\"};
    const char *mk[2] = {"epoch", "note"};
    const char *mv[2] = {"3", "caf\xc3\xa9"};
    std::string p = path("a.safetensors");
    ASSERT_EQ(flx_save_safetensors(p.c_str(), 7, names, ts, 2, mk, mv), FLX_OK) << flx_last_error();
    flx_checkpoint *ck = flx_load_safetensors(ctx, p.c_str());
    ASSERT_NE(ck, nullptr) << flx_last_error();
    ASSERT_EQ(flx_checkpoint_count(ck), 7);
    for (int i = 0; i < 7; i++) {
        EXPECT_STREQ(flx_checkpoint_name(ck, i), names[i]);
        flx_tensor *t = flx_checkpoint_find(ck, names[i]);
        ASSERT_NE(t, nullptr) << flx_last_error();
        EXPECT_EQ(flx_dtype_of(t), flx_dtype_of(ts[i]));
        EXPECT_EQ(shape_of(t), shape_of(ts[i]));
        EXPECT_TRUE(close(values(t), values(ts[i]), 0, 0)) << names[i];
    }
    EXPECT_STREQ(flx_checkpoint_metadata(ck, "epoch"), "3");
    EXPECT_STREQ(flx_checkpoint_metadata(ck, "note"), "caf\xc3\xa9");
    EXPECT_EQ(flx_checkpoint_metadata(ck, "missing"), nullptr);
    EXPECT_EQ(flx_checkpoint_find(ck, "missing"), nullptr);
    EXPECT_EQ(flx_checkpoint_tensor(ck, 7), nullptr);
    EXPECT_EQ(flx_checkpoint_name(ck, -1), nullptr);
    flx_checkpoint_destroy(ck);
    flx_clear_error();
    // A tensor taken from a checkpoint outlives it.
    ck = flx_load_safetensors(ctx, p.c_str());
    ASSERT_NE(ck, nullptr);
    flx_tensor *t0 = flx_checkpoint_tensor(ck, 0);
    flx_checkpoint_destroy(ck);
    EXPECT_TRUE(close(values(t0), {1.5, -2, 3.25, 4, 5, -6}, 0, 0));
}

TEST_F(CheckpointTest, ByteLayoutIsSafetensors) {
    flx_tensor *a = make(ctx, FLX_F32, {2}, {1, 2});
    flx_tensor *b = make(ctx, FLX_I64, {1}, {5});
    flx_tensor *ts[2] = {a, b};
    const char *names[2] = {"a", "b"};
    std::string p = path("l.safetensors");
    ASSERT_EQ(flx_save_safetensors(p.c_str(), 2, names, ts, 0, nullptr, nullptr), FLX_OK);
    std::string bytes = read_bytes(p);
    ASSERT_GE(bytes.size(), 8u);
    uint64_t n = 0;
    for (int k = 7; k >= 0; k--) n = (n << 8) | (uint8_t)bytes[k];
    EXPECT_EQ(n % 8, 0u);
    ASSERT_EQ(bytes.size(), 8 + n + 16);
    std::string header = bytes.substr(8, n);
    EXPECT_EQ(header.rfind("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                           "\"b\":{\"dtype\":\"I64\",\"shape\":[1],\"data_offsets\":[8,16]}}",
                           0),
              0u)
        << header;
    float f[2];
    std::memcpy(f, bytes.data() + 8 + n, 8);
    EXPECT_EQ(f[0], 1.0f);
    EXPECT_EQ(f[1], 2.0f);
    int64_t l;
    std::memcpy(&l, bytes.data() + 8 + n + 8, 8);
    EXPECT_EQ(l, 5);
}

// Python's safetensors package reads our files and we read its files.
TEST_F(CheckpointTest, InteroperatesWithPythonSafetensors) {
    if (std::system("python3 -c 'import safetensors.numpy, numpy' >/dev/null 2>&1") != 0)
        GTEST_SKIP() << "python3 with the safetensors and numpy packages is not installed "
                        "(pip install safetensors numpy)";
    flx_tensor *w = make(ctx, FLX_F32, {2, 3}, {1, 2, 3, 4, 5, 6.5});
    flx_tensor *m = make(ctx, FLX_BOOL, {3}, {1, 0, 1});
    flx_tensor *ts[2] = {w, m};
    const char *names[2] = {"w", "mask"};
    const char *mk[1] = {"epoch"};
    const char *mv[1] = {"7"};
    std::string ours = path("ours.safetensors"), theirs = path("theirs.safetensors");
    ASSERT_EQ(flx_save_safetensors(ours.c_str(), 2, names, ts, 1, mk, mv), FLX_OK);
    std::string script = path("check.py");
    write_bytes(script,
                "import sys, numpy as np\n"
                "from safetensors.numpy import load_file, save_file\n"
                "from safetensors import safe_open\n"
                "d = load_file(sys.argv[1])\n"
                "assert d['w'].dtype == np.float32 and d['w'].shape == (2, 3), d['w']\n"
                "assert np.array_equal(d['w'], np.array([[1, 2, 3], [4, 5, 6.5]], np.float32))\n"
                "assert d['mask'].dtype == np.bool_ and list(d['mask']) == [True, False, True]\n"
                "with safe_open(sys.argv[1], 'np') as f: assert f.metadata() == {'epoch': '7'}\n"
                "save_file({'x': np.arange(6, dtype=np.float64).reshape(3, 2),\n"
                "           'i': np.array([-1, 2**40], dtype=np.int64),\n"
                "           'k': np.array([3], dtype=np.int32)}, sys.argv[2], metadata={'m': 'v'})\n");
    std::string cmd = "python3 " + script + " " + ours + " " + theirs;
    ASSERT_EQ(std::system(cmd.c_str()), 0) << "python could not read our file: " << cmd;
    flx_checkpoint *ck = flx_load_safetensors(ctx, theirs.c_str());
    ASSERT_NE(ck, nullptr) << flx_last_error();
    flx_tensor *x = flx_checkpoint_find(ck, "x"), *i = flx_checkpoint_find(ck, "i"),
               *k = flx_checkpoint_find(ck, "k");
    ASSERT_TRUE(x && i && k) << flx_last_error();
    EXPECT_EQ(shape_of(x), (Shape{3, 2}));
    EXPECT_TRUE(close(values(x), {0, 1, 2, 3, 4, 5}, 0, 0));
    EXPECT_EQ(flx_dtype_of(i), FLX_I64);
    EXPECT_TRUE(close(values(i), {-1, 1099511627776.0}, 0, 0));
    EXPECT_EQ(flx_dtype_of(k), FLX_I32);
    EXPECT_STREQ(flx_checkpoint_metadata(ck, "m"), "v");
    flx_checkpoint_destroy(ck);
}

TEST_F(CheckpointTest, FailedSaveKeepsThePreviousFile) {
    flx_tensor *a = make(ctx, FLX_F32, {2}, {1, 2});
    const char *names[1] = {"a"};
    std::string p = path("keep.safetensors");
    ASSERT_EQ(flx_save_safetensors(p.c_str(), 1, names, &a, 0, nullptr, nullptr), FLX_OK);
    std::string before = read_bytes(p);
    // A tensor whose computation fails only when its data is read (an index out of range is a
    // device-side error): the save fails after the temporary file was opened.
    flx_tensor *src = make(ctx, FLX_F32, {3}, {1, 2, 3});
    flx_tensor *idx = make(ctx, FLX_I64, {2}, {0, 99});
    flx_tensor *bad = flx_index_select(src, 0, idx);
    ASSERT_NE(bad, nullptr);
    const char *bn[1] = {"bad"};
    EXPECT_NE(flx_save_safetensors(p.c_str(), 1, bn, &bad, 0, nullptr, nullptr), FLX_OK);
    EXPECT_EQ(read_bytes(p), before);
    EXPECT_EQ(files(), std::vector<std::string>{"keep.safetensors"}) << "temporary file left behind";
    // Rejected before anything is written.
    const char *dup[2] = {"a", "a"};
    flx_tensor *two[2] = {a, a};
    EXPECT_EQ(flx_save_safetensors(p.c_str(), 2, dup, two, 0, nullptr, nullptr), FLX_ERR_INVALID_ARGUMENT);
    EXPECT_EQ(read_bytes(p), before);
    // A directory that does not exist.
    std::string nowhere = path("no/such/dir.safetensors");
    EXPECT_EQ(flx_save_safetensors(nowhere.c_str(), 1, names, &a, 0, nullptr, nullptr), FLX_ERR_BACKEND);
    EXPECT_NE(std::string(flx_last_error()).find("temporary"), std::string::npos);
    flx_clear_error();
}

TEST_F(CheckpointTest, BadArgumentsAreRejected) {
    flx_tensor *a = make(ctx, FLX_F32, {2}, {1, 2});
    std::string p = path("x.safetensors");
    const char *ok[1] = {"a"};
    const char *empty[1] = {""};
    const char *reserved[1] = {"__metadata__"};
    const char *ctrl[1] = {"a\nb"};
    const char *badutf[1] = {"a\xff"};
    flx_tensor *null_t = nullptr;
    EXPECT_EQ(flx_save_safetensors(nullptr, 1, ok, &a, 0, nullptr, nullptr), FLX_ERR_INVALID_ARGUMENT);
    EXPECT_EQ(flx_save_safetensors(p.c_str(), -1, ok, &a, 0, nullptr, nullptr), FLX_ERR_INVALID_ARGUMENT);
    EXPECT_EQ(flx_save_safetensors(p.c_str(), 1, nullptr, &a, 0, nullptr, nullptr), FLX_ERR_INVALID_ARGUMENT);
    EXPECT_EQ(flx_save_safetensors(p.c_str(), 1, empty, &a, 0, nullptr, nullptr), FLX_ERR_INVALID_ARGUMENT);
    EXPECT_EQ(flx_save_safetensors(p.c_str(), 1, reserved, &a, 0, nullptr, nullptr), FLX_ERR_INVALID_ARGUMENT);
    EXPECT_EQ(flx_save_safetensors(p.c_str(), 1, ctrl, &a, 0, nullptr, nullptr), FLX_ERR_INVALID_ARGUMENT);
    EXPECT_EQ(flx_save_safetensors(p.c_str(), 1, badutf, &a, 0, nullptr, nullptr), FLX_ERR_INVALID_ARGUMENT);
    EXPECT_EQ(flx_save_safetensors(p.c_str(), 1, ok, &null_t, 0, nullptr, nullptr), FLX_ERR_INVALID_ARGUMENT);
    EXPECT_EQ(flx_save_safetensors(p.c_str(), 1, ok, &a, 1, nullptr, nullptr), FLX_ERR_INVALID_ARGUMENT);
    const char *mk[2] = {"k", "k"};
    const char *mv[2] = {"1", "2"};
    EXPECT_EQ(flx_save_safetensors(p.c_str(), 1, ok, &a, 2, mk, mv), FLX_ERR_INVALID_ARGUMENT);
    EXPECT_NE(std::string(flx_last_error()).find("'k' appears twice"), std::string::npos) << flx_last_error();
    const char *dupnames[3] = {"b", "a", "b"};
    flx_tensor *three[3] = {a, a, a};
    EXPECT_EQ(flx_save_safetensors(p.c_str(), 3, dupnames, three, 0, nullptr, nullptr), FLX_ERR_INVALID_ARGUMENT);
    EXPECT_NE(std::string(flx_last_error()).find("'b' appears twice"), std::string::npos) << flx_last_error();
    EXPECT_EQ(files().size(), 0u);
    EXPECT_EQ(flx_load_safetensors(nullptr, p.c_str()), nullptr);
    EXPECT_EQ(flx_load_safetensors(ctx, nullptr), nullptr);
    EXPECT_EQ(flx_load_safetensors(ctx, p.c_str()), nullptr);  // missing file
    EXPECT_NE(std::string(flx_last_error()).find("cannot open"), std::string::npos);
    EXPECT_EQ(flx_load_safetensors(ctx, dir.c_str()), nullptr);  // a directory
    EXPECT_NE(std::string(flx_last_error()).find("not a regular file"), std::string::npos) << flx_last_error();
    EXPECT_EQ(flx_checkpoint_count(nullptr), -1);
    EXPECT_EQ(flx_checkpoint_tensor(nullptr, 0), nullptr);
    EXPECT_EQ(flx_checkpoint_find(nullptr, "a"), nullptr);
    EXPECT_EQ(flx_checkpoint_metadata(nullptr, "a"), nullptr);
    flx_checkpoint_destroy(nullptr);
    flx_clear_error();
}

struct BadFile {
    const char *what;
    std::string bytes;
    const char *needle;  // part of the expected message
};

std::vector<BadFile> bad_files() {
    const std::string d8(8, '\0');
    auto one = [](const std::string &entry) { return "{\"t\":" + entry + "}"; };
    std::vector<BadFile> v = {
        {"empty file", "", "too short"},
        {"7 bytes", std::string(7, '\0'), "too short"},
        {"header length beyond the file", make_file("{}", "").substr(0, 8) + "{", "bad header length"},
        {"huge header length", std::string("\xff\xff\xff\xff\xff\xff\xff\x7f", 8) + "{}", "bad header length"},
        {"zero header length", std::string(8, '\0'), "bad header length"},
        {"header length 1", make_file("{", ""), "bad header length"},
        {"header not an object", make_file("\"abc\"", ""), "not a JSON object"},
        {"not JSON", make_file("hello!!!", ""), "not valid JSON"},
        {"truncated JSON", make_file("{\"t\":{\"dtype\"", ""), "not valid JSON"},
        {"JSON array", make_file("[1,2]   ", ""), "not a JSON object"},
        {"trailing garbage", make_file("{} x", ""), "not valid JSON"},
        {"unknown dtype", make_file(one("{\"dtype\":\"F8_E4M3\",\"shape\":[8],\"data_offsets\":[0,8]}"), d8),
         "unsupported dtype 'F8_E4M3'"},
        {"dtype not a string", make_file(one("{\"dtype\":3,\"shape\":[2],\"data_offsets\":[0,8]}"), d8),
         "unsupported dtype"},
        {"shape/size mismatch", make_file(one("{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]}"), d8),
         "needs 12 bytes"},
        {"offsets beyond data", make_file(one("{\"dtype\":\"F64\",\"shape\":[2],\"data_offsets\":[0,16]}"), d8),
         "beyond"},
        {"offsets reversed", make_file(one("{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[8,0]}"), d8),
         "bad data_offsets"},
        {"negative offset", make_file(one("{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[-8,0]}"), d8),
         "bad data_offsets"},
        {"three offsets", make_file(one("{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8,8]}"), d8),
         "bad data_offsets"},
        {"overlap",
         make_file("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                   "\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}",
                   d8),
         "overlap"},
        {"gap", make_file(one("{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}"), d8), "gap"},
        {"data region larger than the tensors",
         make_file(one("{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}"), d8), "data region holds 8"},
        {"duplicate names",
         make_file("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
                   "\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}",
                   d8),
         "appears twice"},
        {"duplicate names far apart",
         make_file("{\"b\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[0,0]},"
                   "\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
                   "\"c\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[4,4]},"
                   "\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}",
                   d8),
         "'a' appears twice"},
        {"duplicate metadata keys",
         make_file("{\"__metadata__\":{\"k\":\"1\",\"j\":\"2\",\"k\":\"3\"},"
                   "\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}",
                   d8),
         "key 'k' appears twice"},
        {"huge shape",
         make_file(one("{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296],\"data_offsets\":[0,8]}"), d8),
         "too large"},
        {"shape product overflowing int64",
         make_file(one("{\"dtype\":\"F64\",\"shape\":[9223372036854775807],\"data_offsets\":[0,8]}"), d8),
         "too large"},
        {"integer out of range",
         make_file(one("{\"dtype\":\"F32\",\"shape\":[99999999999999999999],\"data_offsets\":[0,8]}"), d8),
         "64-bit range"},
        {"negative size", make_file(one("{\"dtype\":\"F32\",\"shape\":[-2],\"data_offsets\":[0,8]}"), d8),
         "size >= 0"},
        {"fractional size", make_file(one("{\"dtype\":\"F32\",\"shape\":[2.0],\"data_offsets\":[0,8]}"), d8),
         "non-integer"},
        {"too many dims",
         make_file(one("{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1,1,1,1,2],\"data_offsets\":[0,8]}"), d8),
         "bad shape"},
        {"shape not an array", make_file(one("{\"dtype\":\"F32\",\"shape\":2,\"data_offsets\":[0,8]}"), d8),
         "bad shape"},
        {"missing field", make_file(one("{\"dtype\":\"F32\",\"shape\":[2]}"), d8), "exactly the fields"},
        {"field given twice, one missing",
         make_file(one("{\"dtype\":\"F32\",\"shape\":[2],\"shape\":[2]}"), d8), "lacks dtype, shape or data_offsets"},
        {"offsets not integers", make_file(one("{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[\"0\",\"8\"]}"), d8),
         "bad data_offsets"},
        {"data region truncated", make_file(one("{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}"), "abcd"),
         "beyond the 4-byte data region"},
        {"identical ranges",
         make_file("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                   "\"b\":{\"dtype\":\"I32\",\"shape\":[2],\"data_offsets\":[0,8]}}",
                   d8),
         "start at 0 where 8 was expected (overlap)"},
        {"range inside another",
         make_file("{\"a\":{\"dtype\":\"F64\",\"shape\":[2],\"data_offsets\":[0,16]},"
                   "\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}",
                   d8 + d8),
         "overlap"},
        {"dtype size mismatch", make_file(one("{\"dtype\":\"F64\",\"shape\":[2],\"data_offsets\":[0,8]}"), d8),
         "needs 16 bytes but data_offsets [0, 8] hold 8"},
        {"data without tensors", make_file("{\"__metadata__\":{\"k\":\"v\"}}", d8), "cover 0 bytes"},
        {"unknown field",
         make_file(one("{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8],\"x\":1}"), d8),
         "unknown field"},
        {"entry not an object", make_file(one("[1]"), ""), "not a JSON object"},
        {"metadata not strings", make_file("{\"__metadata__\":{\"a\":1}}", ""), "not a string"},
        {"metadata not an object", make_file("{\"__metadata__\":[]}", ""), "not an object"},
        {"bool byte 2",
         make_file(one("{\"dtype\":\"BOOL\",\"shape\":[2],\"data_offsets\":[0,2]}"), std::string("\x01\x02", 2)),
         "other than 0 or 1"},
        {"deep nesting", make_file(std::string(100, '[') + std::string(100, ']'), ""), "nesting"},
        {"invalid UTF-8 name", make_file("{\"\xff\":{}}", ""), "UTF-8"},
        {"control character", make_file("{\"a\tb\":{}}", ""), "control character"},
        {"NUL escape", make_file("{\"a\\u0000\":{}}", ""), "NUL"},
        {"lone surrogate", make_file("{\"\\ud800\":{}}", ""), "surrogate"},
        {"leading zero", make_file(one("{\"dtype\":\"F32\",\"shape\":[02],\"data_offsets\":[0,8]}"), d8),
         "leading zero"},
    };
    return v;
}

TEST_F(CheckpointTest, CorruptedFilesAreRejectedWithAClearError) {
    std::string p = path("bad.safetensors");
    for (const BadFile &b : bad_files()) {
        SCOPED_TRACE(b.what);
        write_bytes(p, b.bytes);
        flx_clear_error();
        flx_checkpoint *ck = flx_load_safetensors(ctx, p.c_str());
        EXPECT_EQ(ck, nullptr);
        flx_checkpoint_destroy(ck);
        EXPECT_EQ(flx_last_status(), FLX_ERR_INVALID_ARGUMENT);
        EXPECT_NE(std::string(flx_last_error()).find(b.needle), std::string::npos)
            << "message: " << flx_last_error();
    }
    // Valid edge cases: no tensors at all; escapes and padding in the header.
    write_bytes(p, make_file("{}", ""));
    flx_checkpoint *ck = flx_load_safetensors(ctx, p.c_str());
    ASSERT_NE(ck, nullptr) << flx_last_error();
    EXPECT_EQ(flx_checkpoint_count(ck), 0);
    flx_checkpoint_destroy(ck);
    write_bytes(p, make_file("{\"\\u00e9\\n\" : {\"shape\":[1],\"dtype\":\"I32\",\"data_offsets\":[0,4]}}  \n ",
                             std::string("\x05\x00\x00\x00", 4)));
    ck = flx_load_safetensors(ctx, p.c_str());
    ASSERT_NE(ck, nullptr) << flx_last_error();
    EXPECT_STREQ(flx_checkpoint_name(ck, 0), "\xc3\xa9\n");
    flx_tensor *t = flx_checkpoint_tensor(ck, 0);
    EXPECT_TRUE(close(values(t), {5}, 0, 0));
    flx_checkpoint_destroy(ck);
    flx_clear_error();
}

// Random byte flips and truncations of a valid file: every load either succeeds or fails cleanly.
TEST_F(CheckpointTest, FuzzedFilesNeverCrash) {
    flx_tensor *ts[3] = {make(ctx, FLX_F32, {2, 2}, {1, 2, 3, 4}), make(ctx, FLX_I64, {3}, {1, 2, 3}),
                         make(ctx, FLX_BOOL, {2}, {1, 0})};
    const char *names[3] = {"w", "idx", "m"};
    const char *mk[1] = {"k"};
    const char *mv[1] = {"v"};
    std::string p = path("f.safetensors"), q = path("fz.safetensors");
    ASSERT_EQ(flx_save_safetensors(p.c_str(), 3, names, ts, 1, mk, mv), FLX_OK);
    const std::string good = read_bytes(p);
    std::mt19937_64 rng(12345);
    int loaded = 0, rejected = 0;
    const char interesting[] = {'"', '{', '}', '[', ']', ',', ':', '0', '9', '-', '\\', '\0', '\xff', ' '};
    for (int it = 0; it < 1000; it++) {
        std::string b = good;
        int mode = (int)(rng() % 4);
        if (mode == 0 || mode == 2) {
            int flips = 1 + (int)(rng() % 4);
            for (int k = 0; k < flips; k++) {
                size_t at = rng() % b.size();
                if (rng() % 2) b[at] = interesting[rng() % sizeof interesting];
                else b[at] = (char)(b[at] ^ (1 << (rng() % 8)));
            }
        }
        if (mode == 1 || mode == 2) b.resize(rng() % (b.size() + 1));
        if (mode == 3) {  // a flip in the length field or the header only
            size_t hl = 8 + ((size_t)(uint8_t)good[0] | ((size_t)(uint8_t)good[1] << 8));
            size_t at = rng() % (hl < b.size() ? hl : b.size());
            b[at] = (char)(rng() & 0xff);
        }
        write_bytes(q, b);
        flx_clear_error();
        flx_checkpoint *ck = flx_load_safetensors(ctx, q.c_str());
        if (ck) {
            loaded++;
            for (int i = 0; i < flx_checkpoint_count(ck); i++) {
                flx_tensor *t = flx_checkpoint_tensor(ck, i);
                ASSERT_NE(t, nullptr);
                (void)values(t);
            }
            flx_checkpoint_destroy(ck);
        } else {
            rejected++;
            EXPECT_NE(flx_last_status(), FLX_OK);
            EXPECT_GT(std::strlen(flx_last_error()), 10u);
        }
    }
    EXPECT_GT(rejected, 300);
    RecordProperty("loaded", loaded);
    flx_clear_error();
}

}  // namespace
