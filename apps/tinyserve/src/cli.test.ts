import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { runCli } from './cli.js';
import { captureIo as capture } from './__fixtures__/capture-io.js';

const HF = fileURLToPath(new URL('../../../__fixtures__/hf/', import.meta.url));

describe('tinyserve generate', () => {
  const ref = JSON.parse(readFileSync(`${HF}llama-tiny-gqa/reference.json`, 'utf8'));
  const prompt = ref.prompts[1];

  it('prints text, token ids and logprobs as JSON, matching transformers greedily', async () => {
    const io = capture();
    const code = await runCli(
      ['generate', '--model', `${HF}llama-tiny-gqa`, '--prompt', prompt.text, '--max-tokens', '20', '--temperature', '0', '--logprobs', '--json', '--ignore-eos'],
      io,
    );
    expect(io.err).toBe('');
    expect(code).toBe(0);
    const out = JSON.parse(io.out);
    expect(out.token_ids).toEqual(prompt.greedy_ids);
    expect(out.logprobs).toHaveLength(20);
    out.logprobs.forEach((lp: number, i: number) => expect(Math.abs(lp - prompt.greedy_logprobs[i])).toBeLessThan(1e-3));
    expect(typeof out.text).toBe('string');
  });

  it('--echo scores the prompt tokens by teacher forcing', async () => {
    const io = capture();
    await runCli(['generate', '--model', `${HF}llama-tiny-gqa`, '--prompt', prompt.text, '--max-tokens', '2', '--temperature', '0', '--echo', '--json'], io);
    const out = JSON.parse(io.out);
    expect(out.token_ids.slice(0, prompt.input_ids.length)).toEqual(prompt.input_ids);
    expect(out.logprobs[0]).toBeNull();
    for (let i = 1; i < prompt.input_ids.length; i++) expect(Math.abs(out.logprobs[i] - prompt.prompt_logprobs[i])).toBeLessThan(1e-3);
    expect(out.text.startsWith(prompt.text)).toBe(true);
  });

  it('streams plain text and a summary line', async () => {
    const io = capture();
    const code = await runCli(['generate', '--model', `${HF}gpt2-tiny`, '--prompt', 'Hello', '--max-tokens', '5', '--seed', '1', '--executor', 'cpu'], io);
    expect(code).toBe(0);
    expect(io.err).toMatch(/\[5 tokens, length, .* cpu\]/);
  });

  it('takes config from the environment and rejects bad values by name', async () => {
    const io = capture({ TINYSERVE_PAGE_SIZE: '0' });
    const code = await runCli(['generate', '--model', `${HF}gpt2-tiny`, '--prompt', 'Hi'], io);
    expect(code).toBe(1);
    expect(io.err).toMatch(/invalid_config.*pageSize/);
  });

  it('explains missing and unknown flags', async () => {
    let io = capture();
    expect(await runCli(['generate', '--model', `${HF}gpt2-tiny`], io)).toBe(2);
    expect(io.err).toMatch(/--prompt is required/);
    io = capture();
    expect(await runCli(['generate', '--prompt', 'x', '--bogus'], io)).toBe(2);
    expect(io.err).toMatch(/bogus/);
    io = capture();
    expect(await runCli(['frobnicate'], io)).toBe(2);
    expect(io.err).toMatch(/unknown command 'frobnicate'/);
  });

  it('reports a missing model directory clearly', async () => {
    const io = capture();
    expect(await runCli(['generate', '--model', '/nonexistent/model', '--prompt', 'x'], io)).toBe(1);
    expect(io.err).toMatch(/model_load_error.*\/nonexistent\/model/);
  });

  it('prints help', async () => {
    const io = capture();
    expect(await runCli(['generate', '--help'], io)).toBe(0);
    expect(io.out).toMatch(/--max-tokens/);
  });
});
