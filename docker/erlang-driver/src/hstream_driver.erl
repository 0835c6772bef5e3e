%% The harness's client driver for the official Erlang client, hstreamdb_erl.
%%
%% Reads one JSON request per line on stdin, answers one JSON line on stdout
%% (harness/clients/PROTOCOL.md). Only hstreamdb_erl's public API is used: the client
%% facade for streams, shards and lookups, and a producer (batching, discovery, retries:
%% the behaviour the fault suites are about) for appends. The client has no subscription
%% consumer and no shard reader (it reads only by key, which the protocol has no op for),
%% so those ops answer UNSUPPORTED.
-module(hstream_driver).
-export([main/1]).

%% Per-RPC deadline inside the client. The harness waits 30 s for each answer, so every
%% op must answer well before that even when the client retries internally.
-define(GRPC_TIMEOUT, 5000).
%% How long one append op may wait for all of its records' acknowledgements.
-define(APPEND_BUDGET_MS, 20000).
%% How long a producer may take to flush on close (the harness waits 10 s for close).
-define(PRODUCER_STOP_MS, 1000).
-define(COMPRESSIONS, [<<"none">>, <<"gzip">>, <<"zstd">>]).

main(_Args) ->
    %% stdout carries the protocol: the client's log lines must go to stderr.
    ok = log_to_stderr(),
    ok = unpack_nifs(),
    {ok, _} = application:ensure_all_started(hstreamdb_erl),
    %% The protocol is UTF-8 bytes both ways. The io module speaks characters and would
    %% transcode them per the device's encoding (a latin1 device turns each UTF-8 byte into
    %% a character of its own); the file module passes bytes through as they are.
    ok = io:setopts(standard_io, [binary, {encoding, latin1}]),
    loop(#{client => undefined, producers => #{}, urls => undefined}).

log_to_stderr() ->
    %% A handler's output device cannot be changed in place: replace the default handler.
    _ = logger:remove_handler(default),
    logger:add_handler(default, logger_std_h, #{config => #{type => standard_error}}).

%% -- NIFs in an escript -------------------------------------------------------------------

%% jiffy and ezstd are NIF libraries, and a shared object cannot be loaded from inside an
%% escript's archive (dlopen needs a file). So the apps that carry one are copied out of the
%% archive once, into a per-build cache directory, and put first on the code path, where
%% their own on_load finds priv/*.so on disk.
unpack_nifs() ->
    Script = escript:script_name(),
    {ok, Sections} = escript:extract(Script, []),
    case proplists:get_value(archive, Sections) of
        undefined ->
            ok;
        Archive ->
            {ok, Entries} = zip:list_dir(Archive),
            Files = [Name || {zip_file, Name, _, _, _, _} <- Entries],
            NifApps = lists:usort([App || Name <- Files,
                                          [App, "priv" | _] <- [filename:split(Name)],
                                          filename:extension(Name) =:= ".so"]),
            unpack_apps(Archive, Files, NifApps)
    end.

unpack_apps(_Archive, _Files, []) ->
    ok;
unpack_apps(Archive, Files, Apps) ->
    Build = integer_to_list(erlang:phash2(Archive, 1 bsl 32), 16),
    Dir = filename:join(filename:basedir(user_cache, "hstream_driver"), Build),
    case filelib:is_dir(Dir) of
        true ->
            ok;
        false ->
            %% Unpack beside the final place and rename, so drivers starting together
            %% never see a half-written directory.
            Tmp = Dir ++ ".tmp" ++ os:getpid(),
            Wanted = [Name || Name <- Files, [App | _] <- [filename:split(Name)],
                              lists:member(App, Apps)],
            ok = filelib:ensure_dir(filename:join(Tmp, "x")),
            {ok, _} = zip:extract(Archive, [{cwd, Tmp}, {file_list, Wanted}]),
            case file:rename(Tmp, Dir) of
                ok -> ok;
                {error, _} -> remove_tree(Tmp)  % another driver won the race
            end
    end,
    lists:foreach(fun(App) -> true = code:add_patha(filename:join([Dir, App, "ebin"])) end,
                  Apps).

remove_tree(Dir) ->
    case file:del_dir_r(Dir) of
        ok -> ok;
        {error, _} -> ok
    end.

%% -- the request loop ---------------------------------------------------------------------

loop(State) ->
    case file:read_line(standard_io) of
        eof -> ok;
        {error, _} -> ok;
        {ok, Line} ->
            drain_stale_replies(),
            {Reply, NewState, Continue} = handle_line(Line, State),
            ok = file:write(standard_io, [jiffy:encode(Reply), $\n]),
            case Continue of
                true -> loop(NewState);
                false -> ok
            end
    end.

%% A producer answers append_sync by message; an answer that came after we stopped waiting
%% is stale and would otherwise pile up in the mailbox.
drain_stale_replies() ->
    receive _ -> drain_stale_replies()
    after 0 -> ok
    end.

handle_line(Line, State) ->
    try jiffy:decode(Line, [return_maps]) of
        Request = #{<<"op">> := Op} when is_binary(Op) ->
            Id = maps:get(<<"id">>, Request, null),
            Args = maps:get(<<"args">>, Request, #{}),
            {Result, NewState} =
                try op(Op, Args, State)
                catch Class:Reason:Stack ->
                    io:format(standard_error, "[erlang] ~s crashed: ~p:~p~n~p~n",
                              [Op, Class, Reason, Stack]),
                    %% A crash inside the client after the request may have left: unknown.
                    {{info, undefined, fmt("~tp:~tp", [Class, Reason])}, State}
                end,
            {reply(Id, Result), NewState, Op =/= <<"close">>};
        Other ->
            {reply(null, {fail, <<"UNSUPPORTED">>,
                          fmt("not a driver request (no \"op\"): ~tP", [Other, 20])}),
             State, true}
    catch _:_ ->
        {reply(null, {fail, <<"UNSUPPORTED">>, <<"not a JSON request">>}), State, true}
    end.

reply(Id, {ok, Value}) -> #{id => Id, type => ok, value => Value};
reply(Id, {Type, Status, Error}) ->
    #{id => Id, type => Type, status => status_json(Status), error => to_bin(Error)}.

status_json(undefined) -> null;
status_json(S) -> S.

%% -- operations ---------------------------------------------------------------------------

op(<<"connect">>, #{<<"token">> := _}, State) ->
    %% A token cluster: this driver passes no authorization metadata to hstreamdb_erl.
    {{fail, <<"UNSUPPORTED">>, <<"the Erlang driver sends no token (authorization)">>}, State};
op(<<"connect">>, #{<<"urls">> := Urls = [_ | _]}, State) ->
    Url = client_url(Urls),
    case hstreamdb_client:start(#{url => Url, grpc_timeout => ?GRPC_TIMEOUT,
                                  rpc_options => #{pool_size => 1}}) of
        {ok, Client} ->
            %% hstreamdb_erl learns no nodes: it keeps the URL list it was given and asks
            %% for shard owners per shard when a producer starts.
            {{ok, #{nodes => []}}, State#{client := Client, urls := Url}};
        {error, Reason} ->
            {{info, undefined, fmt("~tp", [Reason])}, State}
    end;
op(<<"connect">>, _, State) ->
    {{fail, <<"UNSUPPORTED">>, <<"connect needs a non-empty \"urls\" list">>}, State};
op(<<"close">>, _, State = #{client := C, producers := Ps}) ->
    [catch hstreamdb:stop_producer(P) || P <- maps:values(Ps)],
    C =/= undefined andalso (catch hstreamdb_client:stop(C)),
    {{ok, #{}}, State};
op(Op, _, State = #{client := undefined}) when Op =/= <<"subscribe">>, Op =/= <<"fetch">>,
                                             Op =/= <<"ack">>, Op =/= <<"read_shard">> ->
    {{fail, <<"UNSUPPORTED">>, <<"no client yet: send connect first">>}, State};
op(<<"create_stream">>, Args = #{<<"stream">> := Stream}, State = #{client := C}) ->
    Shards = maps:get(<<"shards">>, Args, 1),
    Repl = maps:get(<<"replication_factor">>, Args, 1),
    result(hstreamdb_client:create_stream(C, Stream, Repl, 24 * 3600, Shards), State);
op(<<"delete_stream">>, Args = #{<<"stream">> := Stream}, State = #{client := C}) ->
    result(hstreamdb_client:delete_stream(C, Stream,
                                          maps:get(<<"ignore_non_exist">>, Args, false),
                                          maps:get(<<"force">>, Args, false)), State);
op(<<"list_shards">>, #{<<"stream">> := Stream}, State = #{client := C}) ->
    case hstreamdb_client:list_shards(C, Stream) of
        {ok, Shards} ->
            {{ok, #{shards => [#{shard_id => maps:get(shardId, S),
                                  start => to_bin(maps:get(startHashRangeKey, S)),
                                  'end' => to_bin(maps:get(endHashRangeKey, S))}
                                || S <- Shards]}},
             State};
        Error -> {classify(Error), State}
    end;
op(<<"lookup_shard">>, #{<<"shard_id">> := ShardId}, State = #{client := C}) ->
    case hstreamdb_client:lookup_shard(C, ShardId) of
        {ok, {Host, Port}} -> {{ok, #{node => fmt("~ts:~p", [Host, Port])}}, State};
        Error -> {classify(Error), State}
    end;
op(<<"append">>, Args = #{<<"stream">> := Stream, <<"records">> := Records}, State) ->
    Key = maps:get(<<"key">>, Args, <<>>),
    Compression = maps:get(<<"compression">>, Args, <<"none">>),
    case lists:member(Compression, ?COMPRESSIONS) of
        false ->
            {{fail, <<"UNSUPPORTED">>,
              <<"hstreamdb_erl compresses with none, gzip or zstd, not ", Compression/binary>>},
             State};
        true ->
            {Producer, State1} = producer(Stream, binary_to_atom(Compression), State),
            Deadline = erlang:monotonic_time(millisecond) + ?APPEND_BUDGET_MS,
            {append_all(Producer, Key, Records, Deadline, []), State1}
    end;
op(Op, _, State) when Op =:= <<"subscribe">>; Op =:= <<"fetch">>; Op =:= <<"ack">>;
                      Op =:= <<"stop_consumer">>; Op =:= <<"delete_subscription">> ->
    {{fail, <<"UNSUPPORTED">>, <<"hstreamdb_erl has no subscription API">>}, State};
op(<<"read_shard">>, _, State) ->
    {{fail, <<"UNSUPPORTED">>, <<"hstreamdb_erl has no shard reader (it reads only by key)">>},
     State};
op(<<"list_streams">>, _, State) ->
    {{fail, <<"UNSUPPORTED">>, <<"hstreamdb_erl has no list_streams">>}, State};
op(<<"describe_cluster">>, _, State) ->
    {{fail, <<"UNSUPPORTED">>, <<"hstreamdb_erl has no describe_cluster">>}, State};
op(Op, _, State) ->
    {{fail, <<"UNSUPPORTED">>, <<"hstreamdb_erl driver has no op ", Op/binary>>}, State}.

%% hstreamdb_erl takes one comma-separated string: the scheme and options come from the
%% first entry, the others must be bare host:port (a scheme there is an invalid host). It
%% must be a string, although its type says binary() | string(): a binary URL parses to a
%% binary scheme, which the client rejects as unknown_scheme (and the port of every later
%% entry is matched against {Port, ""}, which a binary never gives). The client shuffles
%% the list and takes the first entry that answers Echo.
%% The harness may hand over URLs with a scheme (hstream://host:port) or bare host:port.
client_url([First | Rest]) ->
    lists:flatten(["http://", host_port(First), [[",", host_port(U)] || U <- Rest]]).

host_port(Url) ->
    case string:split(binary_to_list(Url), "://") of
        [_Scheme, HostPort] -> HostPort;
        [HostPort] -> HostPort
    end.

%% The producer acknowledges each record on its own (append_sync): one record per client
%% batch, so every record gets its own id and the answer can say which ones made it.
append_all(_Producer, _Key, [], _Deadline, Ids) ->
    {ok, #{record_ids => lists:reverse(Ids)}};
append_all(Producer, Key, [Record | Rest], Deadline, Ids) ->
    Left = max(0, Deadline - erlang:monotonic_time(millisecond)),
    case hrecord(Key, Record) of
        {error, Why} when Ids =:= [] ->
            {fail, <<"UNSUPPORTED">>, Why};
        {error, Why} ->
            {info, undefined, <<"records before this one were appended; then: ", Why/binary>>};
        HRecord ->
            case hstreamdb:append_sync(Producer, HRecord, Left, Left) of
                {ok, #{shardId := S, batchId := B, batchIndex := I}} ->
                    append_all(Producer, Key, Rest, Deadline, [[S, B, I] | Ids]);
                Error ->
                    {_, Status, Text} = classify(Error),
                    %% The producer retries a batch after errors and timeouts, so even a
                    %% definite rejection of its last attempt does not say that no earlier
                    %% attempt was written: an append error is never a definite failure.
                    {info, Status, Text}
            end
    end.

hrecord(Key, Record = #{<<"json">> := Json}) when is_map(Json) ->
    %% A JSON record's payload is a serialized google.protobuf.Struct; hstreamdb_erl sends
    %% the bytes it is given, so the Struct is built with the client's own generated codec.
    try hstreamdb_api:encode_msg(json_struct(Json), struct) of
        Payload -> with_attributes(hstreamdb:to_record(Key, json, Payload), Record)
    catch error:Reason ->
        {error, fmt("cannot encode JSON record as a protobuf Struct: ~tp", [Reason])}
    end;
hrecord(Key, Record = #{<<"data">> := Data}) ->
    with_attributes(hstreamdb:to_record(Key, raw, base64:decode(Data)), Record);
hrecord(_Key, _Record) ->
    {error, <<"a record needs \"data\" (base64) or \"json\" (an object)">>}.

%% to_record/3 has no attributes argument; the header is the client's plain record map,
%% whose attributes field it encodes as given.
with_attributes({Key, HRecord = #{header := Header}}, #{<<"attributes">> := Attrs})
  when is_map(Attrs), map_size(Attrs) > 0 ->
    {Key, HRecord#{header := Header#{attributes => Attrs}}};
with_attributes(PKeyRecord, _Record) ->
    PKeyRecord.

json_struct(Object) ->
    #{fields => maps:map(fun(_, V) -> json_value(V) end, Object)}.

json_value(null) -> #{kind => {null_value, 'NULL_VALUE'}};
json_value(true) -> #{kind => {bool_value, true}};
json_value(false) -> #{kind => {bool_value, false}};
json_value(N) when is_number(N) -> #{kind => {number_value, float(N)}};
json_value(S) when is_binary(S) -> #{kind => {string_value, S}};
json_value(L) when is_list(L) -> #{kind => {list_value, #{values => [json_value(V) || V <- L]}}};
json_value(M) when is_map(M) -> #{kind => {struct_value, json_struct(M)}}.

producer(Stream, Compression, State = #{producers := Ps, urls := Url}) ->
    Key = {Stream, Compression},
    case maps:find(Key, Ps) of
        {ok, P} -> {P, State};
        error ->
            Name = list_to_atom("producer_" ++ integer_to_list(erlang:unique_integer([positive]))),
            ok = hstreamdb:start_producer(Name, #{
                client_options => #{url => Url, grpc_timeout => ?GRPC_TIMEOUT},
                stream => Stream,
                %% one record per batch, flushed at once: append_sync answers per record
                buffer_options => #{compression_type => Compression, max_records => 1,
                                    interval => 10},
                writer_options => #{grpc_timeout => ?GRPC_TIMEOUT},
                stop_timeout => ?PRODUCER_STOP_MS
            }),
            {Name, State#{producers := Ps#{Key => Name}}}
    end.

%% -- results and errors -------------------------------------------------------------------

result(ok, State) -> {{ok, #{}}, State};
result({ok, _}, State) -> {{ok, #{}}, State};
result(Error, State) -> {classify(Error), State}.

%% Jepsen's rule, as in harness.history.classify_error: only a server's rejection is definite.
%% grpc-erl reports a non-OK status as {error, {Codename, Message}} (Codename an atom such
%% as invalid_argument, Message the server's JSON text); hstreamdb_erl turns a few into
%% {grpc_error, #{status, message}} or, for error 901, {shard_mismatch, Extra}.
classify({error, {grpc_error, #{status := Status, message := Message}}}) ->
    status_result(status_name(Status), Message);
classify({error, {shard_mismatch, Extra}}) ->
    {fail, <<"INVALID_ARGUMENT">>, fmt("shard_mismatch: ~tp", [Extra])};
classify({error, {Code, Message}}) when is_atom(Code), is_binary(Message) ->
    case status_name(Code) of
        undefined -> {info, undefined, fmt("~tp", [{Code, Message}])};
        Name -> status_result(Name, Message)
    end;
classify({error, Reason}) -> {info, undefined, fmt("~tp", [Reason])};
classify(Other) -> {info, undefined, fmt("~tp", [Other])}.

status_result(Name, Message) ->
    Definite = [<<"INVALID_ARGUMENT">>, <<"NOT_FOUND">>, <<"ALREADY_EXISTS">>,
                <<"UNAUTHENTICATED">>, <<"PERMISSION_DENIED">>, <<"UNIMPLEMENTED">>,
                <<"OUT_OF_RANGE">>],
    Text = message_text(Message),
    Type = case lists:member(Name, Definite) of
               true -> fail;
               false when Name =:= <<"FAILED_PRECONDITION">> -> precondition(Message);
               false -> info
           end,
    {Type, Name, Text}.

%% FAILED_PRECONDITION is definite only for HStreamDB codes raised before anything is
%% written: stream has subscriptions (202), missing stream (302), subscription has
%% consumers (305), wrong server (800).
precondition(#{<<"error">> := Code}) when Code =:= 202; Code =:= 302; Code =:= 305;
                                          Code =:= 800 ->
    fail;
precondition(Message) when is_binary(Message) ->
    try jiffy:decode(Message, [return_maps]) of
        Map when is_map(Map) -> precondition(Map);
        _ -> info
    catch _:_ -> info
    end;
precondition(_) ->
    info.

message_text(Message) when is_binary(Message) -> Message;
message_text(Message) when is_map(Message) -> jiffy:encode(Message);
message_text(Message) -> fmt("~tp", [Message]).

status_name(Status) when is_binary(Status) ->
    try status_name(binary_to_integer(Status)) catch error:badarg -> undefined end;
status_name(Status) when is_integer(Status) ->
    case lists:keyfind(Status, 1, statuses()) of
        {_, Name} -> status_name(Name);
        false -> fmt("STATUS_~p", [Status])
    end;
status_name(Code) when is_atom(Code) ->
    case lists:keyfind(Code, 2, statuses()) of
        {_, _} -> list_to_binary(string:uppercase(atom_to_list(Code)));
        false -> undefined
    end.

statuses() ->
    [{1, cancelled}, {2, unknown}, {3, invalid_argument}, {4, deadline_exceeded},
     {5, not_found}, {6, already_exists}, {7, permission_denied}, {8, resource_exhausted},
     {9, failed_precondition}, {10, aborted}, {11, out_of_range}, {12, unimplemented},
     {13, internal}, {14, unavailable}, {15, data_loss}, {16, unauthenticated}].

fmt(Format, Args) -> unicode:characters_to_binary(io_lib:format(Format, Args)).

to_bin(B) when is_binary(B) -> B;
to_bin(L) when is_list(L) ->
    case unicode:characters_to_binary(L) of
        B when is_binary(B) -> B;
        _ -> fmt("~tp", [L])
    end;
to_bin(Other) -> fmt("~tp", [Other]).
