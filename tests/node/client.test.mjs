// End-to-end tests of the worker through openai-node (the official OpenAI client for Node.js),
// the client many agent stacks use. Run by tests/python/test_node_client.py, which starts the
// worker and the mock-llm simulator and passes their addresses in WORKER_URL and MOCK_URL; the
// worker is configured for self-consistency with hierarchical tool voting before these run.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import OpenAI from 'openai';

const workerUrl = process.env.WORKER_URL;
const mockUrl = process.env.MOCK_URL;
assert.ok(workerUrl && mockUrl, 'WORKER_URL and MOCK_URL must be set (run through tests/python/test_node_client.py)');

const client = new OpenAI({ baseURL: `${workerUrl}/v1`, apiKey: 'dummy-key', maxRetries: 0 });

const calculator = {
  type: 'function',
  function: {
    name: 'calculator',
    description: 'Perform arithmetic calculations',
    parameters: {
      type: 'object',
      properties: { expression: { type: 'string', description: 'Mathematical expression to evaluate' } },
      required: ['expression'],
    },
  },
};

async function mockStats() {
  const r = await fetch(`${mockUrl}/_mock/stats`);
  return r.json();
}

async function mockReset() {
  const r = await fetch(`${mockUrl}/_mock/reset`, { method: 'POST', body: '{}', headers: { 'content-type': 'application/json' } });
  assert.equal(r.status, 200);
}

test('a tool-calling request with budget 5 returns the voted tool call', async () => {
  await mockReset();
  // openai-node sends unknown body fields as they are: this is how an agent passes `budget`.
  const r = await client.chat.completions.create({
    model: 'gpt-4o-mini',
    messages: [
      { role: 'system', content: 'You are a precise calculator. Always use the calculator tool for arithmetic.' },
      { role: 'user', content: 'What is 847 * 293 + 156?' },
    ],
    tools: [calculator],
    budget: 5,
    return_response_only: false,
  });
  const choice = r.choices[0];
  assert.equal(choice.finish_reason, 'tool_calls');
  assert.equal(choice.message.tool_calls.length, 1);
  const call = choice.message.tool_calls[0];
  assert.equal(call.type, 'function');
  assert.equal(call.function.name, 'calculator');
  // The simulator answers "847 * 293 + 156" three times in five and "847*293+156" twice.
  assert.deepEqual(JSON.parse(call.function.arguments), { expression: '847 * 293 + 156' });
  // Budget 5: five calls started; once the vote is decided the rest are cancelled.
  const m = r.metadata;
  assert.equal(m.calls_sent, 5);
  assert.equal(m.calls_completed + m.calls_cancelled, 5);
  assert.equal(m.all_responses.length, m.calls_completed);
  assert.ok(['decided', 'all_completed'].includes(m.stop_reason), m.stop_reason);
  assert.equal(r.usage.total_tokens, r.usage.prompt_tokens + r.usage.completion_tokens);
  assert.ok((await mockStats()).requests <= 5, 'budget 5 spends at most 5 upstream calls');
});

test('a streamed request yields the winning answer, a finish reason and usage', async () => {
  await mockReset();
  const stream = await client.chat.completions.create({
    model: 'gpt-4o-mini',
    messages: [{ role: 'user', content: 'Explain quantum computing in one sentence' }],
    stream: true,
    stream_options: { include_usage: true },
    budget: 4,
  });
  let content = '';
  let role = null;
  let finish = null;
  let usage = null;
  for await (const chunk of stream) {
    if (chunk.usage) usage = chunk.usage;
    for (const c of chunk.choices) {
      role ??= c.delta.role ?? null;
      content += c.delta.content ?? '';
      finish = c.finish_reason ?? finish;
    }
  }
  assert.equal(role, 'assistant');
  assert.ok(content.length > 0, 'the streamed answer has content');
  assert.equal(finish, 'stop');
  assert.ok(usage && usage.total_tokens > 0, 'the usage chunk arrives when include_usage is set');
  const sent = (await mockStats()).requests;
  assert.ok(sent >= 1 && sent <= 4, `budget 4 spends 1 to 4 upstream calls, not ${sent}`);
});

test('a client error comes back as an OpenAI APIError with status and param', async () => {
  await assert.rejects(
    client.chat.completions.create({
      model: 'gpt-4o-mini',
      messages: [{ role: 'user', content: 'hi' }],
      budget: 0,
    }),
    (err) => {
      assert.ok(err instanceof OpenAI.APIError, `expected an APIError, got ${err}`);
      assert.equal(err.status, 400);
      assert.equal(err.param, 'budget');
      return true;
    },
  );
});
