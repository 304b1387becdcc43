#include "client/cli/completion.h"

#include <map>
#include <vector>

#include <CLI/CLI.hpp>

#include "client/cli/output.h"
#include "gpubroker/types.hpp"

namespace gpubroker::ctl {
namespace {

// What completion knows of one option or command, read from the CLI itself.
struct OptionWords {
  std::vector<std::string> longs;   // without "--"
  std::vector<std::string> shorts;  // without "-"
  bool takes_value = false;
  std::string about;
};

struct CommandWords {
  std::string name;
  std::string about;
  std::vector<OptionWords> options;
};

// The first clause of a help text: enough to tell options apart in a menu.
std::string Short(std::string text) {
  for (const char* stop : {";", " (", ": "}) {
    auto at = text.find(stop);
    if (at != std::string::npos && at > 8) text.resize(at);
  }
  if (text.size() > 70) text = text.substr(0, 67) + "...";
  return text;
}

// `text` inside single quotes, for bash and zsh.
std::string Quoted(const std::string& text) {
  std::string out = "'";
  for (char c : text) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return out + "'";
}

// `text` inside single quotes, for fish (which escapes with a backslash).
std::string FishQuoted(const std::string& text) {
  std::string out = "'";
  for (char c : text) {
    if (c == '\'' || c == '\\') out += '\\';
    out += c;
  }
  return out + "'";
}

std::vector<OptionWords> OptionsOf(const CLI::App& app) {
  std::vector<OptionWords> out;
  for (const CLI::Option* o : app.get_options()) {
    if (!o->nonpositional()) continue;
    OptionWords w;
    w.longs = o->get_lnames();
    w.shorts = o->get_snames();
    w.takes_value = o->get_type_size() != 0;
    w.about = Short(o->get_description());
    out.push_back(std::move(w));
  }
  return out;
}

std::vector<CommandWords> CommandsOf(CLI::App& app) {
  std::vector<CommandWords> out;
  for (CLI::App* sub : app.get_subcommands({})) {
    out.push_back({sub->get_name(), Short(sub->get_description()), OptionsOf(*sub)});
  }
  return out;
}

std::string Join(const std::vector<std::string>& words) {
  std::string out;
  for (const auto& w : words) out += (out.empty() ? "" : " ") + w;
  return out;
}

std::string FieldNames() {
  std::vector<std::string> names;
  for (const SlotField& f : SlotFields()) names.emplace_back(f.name);
  return Join(names);
}

// The words an option's value may be; empty: none to offer.
std::string ValueWords(const std::string& command, const std::string& option) {
  if (option == "format") return command == "ls" ? "table csv csv,noheader json" : "table json";
  if (option == "dtype") return Join(DTypeNames());
  if (option == "backend") return "host cuda_vmm cuda_ipc";
  if (option == "device") return "cpu";
  return {};
}

// Commands whose positional arguments are slot names; options whose value is one.
constexpr const char* kNameCommands = "ls show rm wait";
bool TakesSlotName(const std::string& option) { return option == "base"; }

// "ls|show|rm|wait": kNameCommands as a case pattern.
std::string NameCase() {
  std::string out = kNameCommands;
  for (char& c : out) {
    if (c == ' ') c = '|';
  }
  return out;
}

std::string OptionList(const std::vector<OptionWords>& options) {
  std::string words;
  for (const auto& o : options) {
    for (const auto& n : o.longs) words += " --" + n;
    for (const auto& n : o.shorts) words += " -" + n;
  }
  return words;
}

// The words before the cursor, for bash (COMP_WORDS from 1) and zsh (words
// from 2): the command, and a --socket to ask for slot names.
std::string ScanWords(const std::string& words, int first, const std::string& current) {
  return "  for ((i = " + std::to_string(first) + "; i < " + current + "; i++)); do\n"
         "    case ${" + words + "[i]} in\n"
         "      -s|--socket) socket=(--socket \"${" + words + "[i+1]}\"); ((i++)) ;;\n"
         "      --socket=*) socket=(\"${" + words + "[i]}\") ;;\n"
         "      -*) ;;\n"
         "      *) [[ -z $cmd ]] && cmd=${" + words + "[i]} ;;\n"
         "    esac\n"
         "  done\n";
}

// Option values for "COMMAND --OPTION", then each command's options into $opts.
std::string ValueAndOptionCases(const std::string& values, const std::string& per_command) {
  return "  case \"$cmd $prev\" in\n" + values + "  esac\n  case $cmd in\n" + per_command + "  esac\n";
}

// Lists the slot names of the broker named on the line: a stopped broker
// must not freeze the shell, so two seconds at most.
constexpr const char* kSlotLister =
    "timeout 2 gpubrokerctl \"${socket[@]}\" ls --format csv,noheader --fields name 2>/dev/null";

std::string Bash(CLI::App& app) {
  const auto commands = CommandsOf(app);
  std::string names, per_command, values;
  for (const auto& c : commands) {
    names += " " + c.name;
    per_command += "    " + c.name + ") opts=\"" + OptionList(c.options) + "\" ;;\n";
    for (const auto& o : c.options) {
      if (!o.takes_value || o.longs.empty() || o.longs[0] == "socket") continue;
      const std::string key = "\"" + c.name + " --" + o.longs[0] + "\")";
      const std::string words = ValueWords(c.name, o.longs[0]);
      if (o.longs[0] == "fields") {
        values += "    " + key + " local done=; [[ $cur == *,* ]] && done=${cur%,*},\n"
                  "      COMPREPLY=($(compgen -P \"$done\" -W \"" + FieldNames() + "\" -- \"${cur##*,}\"))\n"
                  "      compopt -o nospace 2>/dev/null; return ;;\n";
      } else if (TakesSlotName(o.longs[0])) {
        values += "    " + key + " _gpubrokerctl_slots; return ;;\n";
      } else {
        values += "    " + key + " COMPREPLY=($(compgen -W \"" + words + "\" -- \"$cur\")); return ;;\n";
      }
    }
  }
  std::string shells = Join({std::begin(kCompletionShells), std::end(kCompletionShells)});
  return "# bash completion for gpubrokerctl, generated by `gpubrokerctl completion bash`.\n"
         "_gpubrokerctl_slots() {\n"
         "  local name\n"
         "  while IFS= read -r name; do [[ $name == \"$cur\"* ]] && COMPREPLY+=(\"$name\"); done < <(" +
         std::string(kSlotLister) + ")\n"
         "}\n"
         "_gpubrokerctl() {\n"
         "  local cur=${COMP_WORDS[COMP_CWORD]} prev=${COMP_WORDS[COMP_CWORD-1]} cmd= i opts\n"
         "  local socket=()\n"
         "  COMPREPLY=()\n" +
         ScanWords("COMP_WORDS", 1, "COMP_CWORD") +
         "  case $prev in -s|--socket) COMPREPLY=($(compgen -f -- \"$cur\")); return ;; esac\n"
         "  if [[ -z $cmd ]]; then\n"
         "    COMPREPLY=($(compgen -W \"" + names + OptionList(OptionsOf(app)) + "\" -- \"$cur\"))\n"
         "    return\n"
         "  fi\n" +
         ValueAndOptionCases(values, per_command) +
         "  if [[ $cur == -* ]]; then COMPREPLY=($(compgen -W \"$opts --socket\" -- \"$cur\")); return; fi\n"
         "  case $cmd in\n"
         "    " + NameCase() + ") _gpubrokerctl_slots ;;\n"
         "    completion) COMPREPLY=($(compgen -W \"" + shells + "\" -- \"$cur\")) ;;\n"
         "  esac\n"
         "}\n"
         "complete -F _gpubrokerctl gpubrokerctl\n";
}

std::string Zsh(CLI::App& app) {
  const auto commands = CommandsOf(app);
  std::string described, per_command, values;
  for (const auto& c : commands) {
    described += "    " + Quoted(c.name + ":" + c.about) + "\n";
    per_command += "    " + c.name + ") opts=(" + OptionList(c.options) + ") ;;\n";
    for (const auto& o : c.options) {
      if (!o.takes_value || o.longs.empty() || o.longs[0] == "socket") continue;
      const std::string key = "\"" + c.name + " --" + o.longs[0] + "\")";
      if (o.longs[0] == "fields") {
        values += "    " + key + " compset -P '*,'; compadd -S '' -- " + FieldNames() + "; return ;;\n";
      } else if (TakesSlotName(o.longs[0])) {
        values += "    " + key + " _gpubrokerctl_slots; return ;;\n";
      } else {
        values += "    " + key + " compadd -- " + ValueWords(c.name, o.longs[0]) + "; return ;;\n";
      }
    }
  }
  return "#compdef gpubrokerctl\n"
         "# zsh completion for gpubrokerctl, generated by `gpubrokerctl completion zsh`.\n"
         "_gpubrokerctl_slots() {\n"
         "  local -a names\n"
         "  names=(${(f)\"$(" + std::string(kSlotLister) + ")\"})\n"
         "  compadd -- \"${names[@]}\"\n"
         "}\n"
         "_gpubrokerctl() {\n"
         "  local cmd= i prev=${words[CURRENT-1]} cur=${words[CURRENT]}\n"
         "  local -a socket opts commands\n" +
         ScanWords("words", 2, "CURRENT") +
         "  case $prev in -s|--socket) _files; return ;; esac\n"
         "  if [[ -z $cmd ]]; then\n"
         "    if [[ $cur == -* ]]; then compadd --" + OptionList(OptionsOf(app)) + "; return; fi\n"
         "    commands=(\n" + described +
         "    )\n"
         "    _describe command commands\n"
         "    return\n"
         "  fi\n" +
         ValueAndOptionCases(values, per_command) +
         "  if [[ $cur == -* ]]; then compadd -- \"${opts[@]}\" --socket; return; fi\n"
         "  case $cmd in\n"
         "    " + NameCase() + ") _gpubrokerctl_slots ;;\n"
         "    completion) compadd -- " + Join({std::begin(kCompletionShells), std::end(kCompletionShells)}) + " ;;\n"
         "  esac\n"
         "}\n"
         "compdef _gpubrokerctl gpubrokerctl 2>/dev/null\n";
}

std::string Fish(CLI::App& app) {
  const auto commands = CommandsOf(app);
  std::string out =
      "# fish completion for gpubrokerctl, generated by `gpubrokerctl completion fish`.\n"
      "function __gpubrokerctl_socket\n"
      "    set -l words (commandline -opc)\n"
      "    for i in (seq (count $words))\n"
      "        if contains -- $words[$i] -s --socket; and test $i -lt (count $words)\n"
      "            echo --socket; echo $words[(math $i + 1)]; return\n"
      "        end\n"
      "        string match -q -- '--socket=*' $words[$i]; and echo $words[$i]; and return\n"
      "    end\n"
      "end\n"
      "function __gpubrokerctl_slots\n"
      "    timeout 2 gpubrokerctl (__gpubrokerctl_socket) ls --format csv,noheader --fields name 2>/dev/null\n"
      "end\n"
      "function __gpubrokerctl_fields\n"
      "    set -l done (string replace -r '[^,]*$' '' -- (commandline -ct))\n"
      "    for f in " + FieldNames() + "\n"
      "        echo $done$f\n"
      "    end\n"
      "end\n"
      "complete -c gpubrokerctl -f\n"
      "complete -c gpubrokerctl -s s -l socket -r -F -d 'broker control socket'\n";
  std::vector<std::string> names;
  for (const auto& c : commands) names.push_back(c.name);
  const std::string all = Join(names);
  for (const auto& c : commands) {
    out += "complete -c gpubrokerctl -n 'not __fish_seen_subcommand_from " + all + "' -a " + c.name + " -d " +
           FishQuoted(c.about) + "\n";
  }
  for (const auto& c : commands) {
    const std::string when = "-n '__fish_seen_subcommand_from " + c.name + "'";
    for (const auto& o : c.options) {
      if (o.longs.empty() || o.longs[0] == "socket" || o.longs[0] == "help") continue;
      std::string line = "complete -c gpubrokerctl " + when + " -l " + o.longs[0];
      for (const auto& s : o.shorts) line += " -s " + s;
      if (o.takes_value) {
        const std::string words = ValueWords(c.name, o.longs[0]);
        if (o.longs[0] == "fields") line += " -x -a '(__gpubrokerctl_fields)'";
        else if (TakesSlotName(o.longs[0])) line += " -x -a '(__gpubrokerctl_slots)'";
        else if (!words.empty()) line += " -x -a " + FishQuoted(words);
        else line += " -x";
      }
      out += line + " -d " + FishQuoted(o.about) + "\n";
    }
  }
  out += "complete -c gpubrokerctl -n '__fish_seen_subcommand_from " + std::string(kNameCommands) +
         "' -a '(__gpubrokerctl_slots)'\n";
  out += "complete -c gpubrokerctl -n '__fish_seen_subcommand_from completion' -a " +
         FishQuoted(Join({std::begin(kCompletionShells), std::end(kCompletionShells)})) + "\n";
  return out;
}

}  // namespace

std::string Completion(CLI::App& app, const std::string& shell) {
  if (shell == "zsh") return Zsh(app);
  if (shell == "fish") return Fish(app);
  return Bash(app);
}

}  // namespace gpubroker::ctl
