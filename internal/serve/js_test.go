package serve

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/qwen-tune/qwen-tune/internal/tfile"
)

// need skips, or fails under CI, when a tool the browser and client tests use is missing.
func need(t *testing.T, what, hint string, err error) {
	t.Helper()
	if err == nil {
		return
	}
	msg := what + " is not available (" + err.Error() + "); " + hint
	if os.Getenv("CI") != "" {
		t.Fatal(msg)
	}
	t.Skip(msg)
}

// jsDeps installs the test clients' npm packages (openai, ai, @ai-sdk/openai,
// @langchain/openai, zod, playwright-core) from the lock file when any is missing.
func jsDeps(t *testing.T) string {
	t.Helper()
	_, err := exec.LookPath("node")
	need(t, "node", "install Node.js 20 or newer", err)
	dir, err := filepath.Abs(filepath.Join("testdata", "js"))
	if err != nil {
		t.Fatal(err)
	}
	missing := false
	for _, pkg := range []string{"openai", "ai", "@ai-sdk/openai", "@langchain/openai", "@langchain/core", "zod", "playwright-core"} {
		if _, err := os.Stat(filepath.Join(dir, "node_modules", pkg, "package.json")); err != nil {
			missing = true
		}
	}
	if missing {
		{
			cmd := exec.Command("npm", "ci", "--no-audit", "--no-fund")
			cmd.Dir = dir
			out, err := cmd.CombinedOutput()
			need(t, "npm ci in "+dir, "it needs the npm registry: "+strings.TrimSpace(string(out)), err)
		}
	}
	return dir
}

func runNode(t *testing.T, dir string, env []string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "node", args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("node %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// TestOpenAINodeClient drives the server with OpenAI's official Node client: chat with and
// without streaming, stop sequences, a tool-call round trip, completions, models, the
// 400/401/429 errors and cancelling a stream.
func TestOpenAINodeClient(t *testing.T) {
	dir := jsDeps(t)
	eng := newScripted(t)
	_, url := startServer(t, eng, Options{APIKey: "test-key", Queue: 2})
	out := runNode(t, dir, []string{"QT_BASE_URL=" + url, "QT_API_KEY=test-key"}, "--test", "client.test.mjs")
	t.Log(out)
	if !strings.Contains(out, "# fail 0") || !strings.Contains(out, "# pass 8") {
		t.Fatalf("the client tests did not all pass:\n%s", out)
	}
	if eng.cancels() == 0 {
		t.Fatal("the aborted stream did not cancel its generation")
	}
}

// TestAISDKAndLangChain drives the server with the Vercel AI SDK and LangChain as their
// documentation uses them: text and streams, required and named tool calls, objects from
// Zod schemas (generateObject, withStructuredOutput by JSON schema, function calling and JSON
// mode), tools bound with tool_choice, and log-probabilities.
func TestAISDKAndLangChain(t *testing.T) {
	dir := jsDeps(t)
	eng := newScripted(t)
	_, url := startServer(t, eng, Options{APIKey: "sdk-key"})
	out := runNode(t, dir, []string{"QT_BASE_URL=" + url, "QT_API_KEY=sdk-key"}, "--test", "sdks.test.mjs")
	t.Log(out)
	if !strings.Contains(out, "# fail 0") || !strings.Contains(out, "# pass 7") {
		t.Fatalf("the SDK tests did not all pass:\n%s", out)
	}
}

// TestChatPageInBrowser loads the page in headless Chromium, chats, stops a reply and keeps
// a screenshot in testdata/artifacts.
func TestChatPageInBrowser(t *testing.T) {
	chromium := os.Getenv("QT_CHROMIUM")
	if chromium == "" {
		var err error
		chromium, err = exec.LookPath("chromium")
		need(t, "chromium", "install Debian's chromium package (apt-get install chromium) or set QT_CHROMIUM", err)
	}
	dir := jsDeps(t)
	eng := newScripted(t)
	_, url := startServer(t, eng, Options{APIKey: "page-key"})
	shot, err := filepath.Abs(filepath.Join("testdata", "artifacts", "chat-page.png"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Dir(shot), 0o755); err != nil {
		t.Fatal(err)
	}
	tfile.Remove(t, shot)
	out := runNode(t, dir, []string{"QT_BASE_URL=" + url, "QT_API_KEY=page-key", "QT_CHROMIUM=" + chromium, "QT_SCREENSHOT=" + shot}, "browser.mjs")
	t.Log(out)
	st, err := os.Stat(shot)
	if err != nil || st.Size() < 10000 {
		t.Fatalf("no screenshot at %s (%v)", shot, err)
	}
	if eng.cancels() == 0 {
		t.Fatal("the stop button did not cancel the generation")
	}
}
